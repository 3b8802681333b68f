package plot

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func decode(t *testing.T, b []byte) image.Image {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("decoding the PNG written: %v", err)
	}
	return img
}

func greyAt(img image.Image, x, y int) uint8 {
	return color.GrayModel.Convert(img.At(x, y)).(color.Gray).Y
}

func TestSampleGrid(t *testing.T) {
	const rows, cols = 2, 3
	xs := make([]float32, rows*cols*TilePixels)
	// Tile (1, 2), the last one: a ramp along its first row, clamped values
	// and NaN in its second row.
	last := xs[5*TilePixels:]
	for c := range TileSide {
		last[c] = float32(c) / 27
	}
	copy(last[TileSide:], []float32{-3, 7, float32(math.NaN()), 0.5})

	var buf bytes.Buffer
	if err := SampleGrid(&buf, xs, rows, cols); err != nil {
		t.Fatal(err)
	}
	img := decode(t, buf.Bytes())
	wantW, wantH := Scale*(cols*(TileSide+Gap)+Gap), Scale*(rows*(TileSide+Gap)+Gap)
	if b := img.Bounds(); b.Dx() != wantW || b.Dy() != wantH {
		t.Fatalf("size %v, want %dx%d", b.Size(), wantW, wantH)
	}
	if wantW != 2*(3*30+2) || wantH != 2*(2*30+2) {
		t.Fatalf("geometry constants changed: %dx%d", wantW, wantH)
	}
	// Top-left output pixel of tile (1, 2).
	x0, y0 := Scale*(Gap+2*(TileSide+Gap)), Scale*(Gap+1*(TileSide+Gap))
	for c := range TileSide {
		want := uint8(math.Round(float64(c) / 27 * 255))
		for d := range Scale * Scale {
			if got := greyAt(img, x0+Scale*c+d%Scale, y0+d/Scale); got != want {
				t.Fatalf("tile pixel (0,%d) copy %d: grey %d, want %d", c, d, got, want)
			}
		}
	}
	for c, want := range []uint8{0, 255, 0, 128} {
		if got := greyAt(img, x0+Scale*c, y0+Scale); got != want {
			t.Errorf("tile pixel (1,%d): grey %d, want %d", c, got, want)
		}
	}
	// Gaps: the border, and between tiles; an empty tile is black.
	for _, p := range []image.Point{{0, 0}, {x0 - 1, y0}, {x0, y0 - 1}, {wantW - 1, wantH - 1}} {
		if got := greyAt(img, p.X, p.Y); got != GapGrey {
			t.Errorf("gap pixel %v: grey %d, want %d", p, got, GapGrey)
		}
	}
	if got := greyAt(img, Scale*Gap, Scale*Gap); got != 0 {
		t.Errorf("empty tile pixel: grey %d, want 0", got)
	}
}

func TestSampleGridBadInput(t *testing.T) {
	for _, c := range []struct {
		name       string
		n          int
		rows, cols int
	}{
		{"short", 2*TilePixels - 1, 1, 2},
		{"long", 2*TilePixels + 1, 1, 2},
		{"no rows", 0, 0, 2},
		{"negative", TilePixels, -1, -1},
	} {
		var buf bytes.Buffer
		if err := SampleGrid(&buf, make([]float32, c.n), c.rows, c.cols); err == nil || buf.Len() != 0 {
			t.Errorf("%s: err %v, %d bytes written", c.name, err, buf.Len())
		}
	}
}

// countColour counts the pixels of img equal to c.
func countColour(img image.Image, c color.RGBA) int {
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if color.RGBAModel.Convert(img.At(x, y)) == c {
				n++
			}
		}
	}
	return n
}

func TestCurves(t *testing.T) {
	nan := math.NaN()
	steps := make([]float64, 200)
	train := make([]float64, 200)
	test := make([]float64, 200)
	for i := range steps {
		steps[i] = float64(i * 100)
		train[i] = 1500 + 3000*math.Exp(-float64(i)/30)
		test[i] = nan
		if i%20 == 19 {
			test[i] = train[i] + 40
		}
	}
	for _, c := range []struct {
		name    string
		series  []Series
		colours int // how many palette colours must appear
	}{
		{"learning curves", []Series{{"train NLL", steps, train}, {"test NLL", steps, test}}, 2},
		{"single point", []Series{{"only", []float64{3}, []float64{1980.5}}}, 1},
		{"empty and NaN series", []Series{{"none", nil, nil}, {"nan", []float64{nan, 1}, []float64{2, nan}}}, 0},
		{"no series", nil, 0},
		{"infinities skipped", []Series{{"inf", []float64{0, 1, 2}, []float64{1, math.Inf(1), 3}}}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := Curves(&buf, "NICE on MNIST", "step", c.series...); err != nil {
				t.Fatal(err)
			}
			img := decode(t, buf.Bytes())
			if b := img.Bounds(); b.Dx() != CurvesWidth || b.Dy() != CurvesHeight {
				t.Fatalf("size %v", b.Size())
			}
			if got := color.RGBAModel.Convert(img.At(0, 0)); got != white {
				t.Errorf("corner is %v, want white", got)
			}
			for i := range c.colours {
				// More than the legend swatch (20x3) shows the data was drawn.
				if n := countColour(img, palette[i]); n <= 60 {
					t.Errorf("series %d: only %d pixels of its colour", i, n)
				}
			}
			if os.Getenv("PLOT_KEEP") != "" {
				name := filepath.Join(os.Getenv("PLOT_KEEP"), c.name+".png")
				if err := os.WriteFile(name, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestCurvesBadInput(t *testing.T) {
	var buf bytes.Buffer
	err := Curves(&buf, "t", "x", Series{"ok", []float64{1}, []float64{1}}, Series{"bad", []float64{1, 2}, []float64{1}})
	if err == nil || buf.Len() != 0 {
		t.Errorf("len(X) != len(Y): err %v, %d bytes written", err, buf.Len())
	}
	if err := Curves(&buf, "t", "x", Series{"huge", []float64{0, 1}, []float64{-math.MaxFloat64, math.MaxFloat64}}); err == nil {
		t.Error("a y range that overflows was accepted")
	}
}

func TestAxis(t *testing.T) {
	for _, c := range []struct {
		min, max float64
		ticks    []float64
		labels   []string
	}{
		{0, 1, []float64{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}, []string{"0.0", "0.2", "0.4", "0.6", "0.8", "1.0"}},
		{1983, 4470, []float64{2000, 2500, 3000, 3500, 4000, 4500}, nil},
		{1980.5, 1980.5, []float64{1800, 1900, 2000, 2100}, []string{"1800", "1900", "2000", "2100"}},
		{0, 0, []float64{-1, -0.5, 0, 0.5, 1}, []string{"-1.0", "-0.5", "0.0", "0.5", "1.0"}},
		{3, 2, []float64{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}, nil}, // no data
		{-0.3, 0.1, []float64{-0.30000000000000004, -0.2, -0.1, 0, 0.1}, []string{"-0.3", "-0.2", "-0.1", "0.0", "0.1"}},
	} {
		a := newAxis(c.min, c.max)
		ts := a.ticks()
		if len(ts) != len(c.ticks) {
			t.Errorf("axis %v..%v: ticks %v, want %v", c.min, c.max, ts, c.ticks)
			continue
		}
		for i := range ts {
			if math.Abs(ts[i]-c.ticks[i]) > 1e-9 {
				t.Errorf("axis %v..%v: ticks %v, want %v", c.min, c.max, ts, c.ticks)
				break
			}
		}
		if c.labels != nil {
			var got []string
			for _, v := range ts {
				got = append(got, a.label(v))
			}
			if !slices.Equal(got, c.labels) {
				t.Errorf("axis %v..%v: labels %v, want %v", c.min, c.max, got, c.labels)
			}
		}
	}
}

// frameColumns returns the leftmost and rightmost columns of img that are
// black over most of its height (the plot's frame), and the rows where the
// left frame is black.
func frameColumns(img image.Image) (left, right int, rows []int) {
	b := img.Bounds()
	black := func(x, y int) bool { return color.RGBAModel.Convert(img.At(x, y)) == black }
	left, right = -1, -1
	for x := b.Min.X; x < b.Max.X; x++ {
		n := 0
		for y := b.Min.Y; y < b.Max.Y; y++ {
			if black(x, y) {
				n++
			}
		}
		if n > b.Dy()*3/4 {
			if left < 0 {
				left = x
			}
			right = x
		}
	}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		if left >= 0 && black(left, y) {
			rows = append(rows, y)
		}
	}
	return left, right, rows
}

// A right axis is drawn as a second frame edge whose ticks sit level with
// the y values they translate: with right = y/200 (increasing) or
// (3000-y)/200 (decreasing) and left ticks every 200, every left tick has a
// right tick on its row, and the right ticks are its rows exactly.
func TestCurvesRightAxis(t *testing.T) {
	x := []float64{0, 1, 2, 3}
	y := []float64{1000, 1400, 1800, 2050}
	for _, c := range []struct {
		name  string
		value func(float64) float64
	}{
		{"increasing", func(v float64) float64 { return v / 200 }},
		{"decreasing", func(v float64) float64 { return (3000 - v) / 200 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := CurvesWithRight(&buf, "t", "x", &RightAxis{Label: "units", Value: c.value}, Series{"s", x, y}); err != nil {
				t.Fatal(err)
			}
			img := decode(t, buf.Bytes())
			left, right, rows := frameColumns(img)
			if left < 0 || right <= left+100 {
				t.Fatalf("frame columns %d and %d: no right edge", left, right)
			}
			isBlack := func(x, y int) bool { return color.RGBAModel.Convert(img.At(x, y)) == black }
			var leftTicks, rightTicks []int
			for _, r := range rows {
				if isBlack(left-3, r) {
					leftTicks = append(leftTicks, r)
				}
				if isBlack(right+3, r) {
					rightTicks = append(rightTicks, r)
				}
			}
			if len(leftTicks) < 4 || !slices.Equal(leftTicks, rightTicks) {
				t.Errorf("left ticks on rows %v, right ticks on rows %v", leftTicks, rightTicks)
			}
		})
	}
	var buf bytes.Buffer
	if err := Curves(&buf, "t", "x", Series{"s", x, y}); err != nil {
		t.Fatal(err)
	}
	if left, right, _ := frameColumns(decode(t, buf.Bytes())); right != left {
		t.Errorf("without a right axis: frame columns %d and %d", left, right)
	}
	flat := &RightAxis{Label: "flat", Value: func(float64) float64 { return 1 }}
	if err := CurvesWithRight(&buf, "t", "x", flat, Series{"s", x, y}); err == nil {
		t.Error("a right axis that maps every y to one value was accepted")
	}
}
