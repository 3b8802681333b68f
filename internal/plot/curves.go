package plot

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
)

// Series is one named line of a chart: Y[i] against X[i]. Points where X or
// Y is NaN or infinite are skipped and the line joins their neighbours, so a
// value measured less often (say test NLL once per epoch) can share X with a
// denser series by leaving NaN in between.
type Series struct {
	Name string
	X, Y []float64
}

// Size of the chart Curves draws.
const (
	CurvesWidth  = 800
	CurvesHeight = 500
)

// palette gives each series a distinct colour, in order (then repeats).
var palette = []color.RGBA{
	{31, 119, 180, 255},  // blue
	{255, 127, 14, 255},  // orange
	{44, 160, 44, 255},   // green
	{214, 39, 40, 255},   // red
	{148, 103, 189, 255}, // purple
	{140, 86, 75, 255},   // brown
	{227, 119, 194, 255}, // pink
	{23, 190, 207, 255},  // cyan
}

var (
	black     = color.RGBA{0, 0, 0, 255}
	white     = color.RGBA{255, 255, 255, 255}
	gridGrey  = color.RGBA{225, 225, 225, 255}
	frameGrey = color.RGBA{120, 120, 120, 255}
)

// markerMax: series with at most this many drawable points also get a square marker
// at each point, so short curves and single points stay visible.
const markerMax = 50

// Curves writes a CurvesWidth x CurvesHeight PNG line chart: white
// background, title on top, axes scaled to the finite points of all series
// (with a 5% margin) and round tick labels and light grid lines, xlabel under the x axis, and a
// legend naming each series in its colour, in the corner hiding the fewest
// points. A single point is drawn as a
// marker; empty series (and a chart without any point) are allowed. It is an
// error if a series has len(X) != len(Y).
func Curves(w io.Writer, title, xlabel string, series ...Series) error {
	return CurvesWithRight(w, title, xlabel, nil, series...)
}

// RightAxis is a second scale for the y values of a chart, drawn on its
// right edge: Value maps a y value to it, and must be affine (bits/dim of a
// log-likelihood, say), increasing or decreasing.
type RightAxis struct {
	Label string
	Value func(y float64) float64
}

// CurvesWithRight is Curves with, when right is not nil, the y values also
// read on right's scale: ticks at its round values on the right edge of the
// plot, and its label above them.
func CurvesWithRight(w io.Writer, title, xlabel string, right *RightAxis, series ...Series) error {
	xmin, xmax := math.Inf(1), math.Inf(-1)
	ymin, ymax := math.Inf(1), math.Inf(-1)
	for i, s := range series {
		if len(s.X) != len(s.Y) {
			return fmt.Errorf("curves %q: series %d (%q) has %d x values and %d y values", title, i, s.Name, len(s.X), len(s.Y))
		}
		for j := range s.X {
			if finite(s.X[j]) && finite(s.Y[j]) {
				xmin, xmax = math.Min(xmin, s.X[j]), math.Max(xmax, s.X[j])
				ymin, ymax = math.Min(ymin, s.Y[j]), math.Max(ymax, s.Y[j])
			}
		}
	}
	if xmin <= xmax && (!finite(xmax-xmin) || !finite(ymax-ymin)) {
		return fmt.Errorf("curves %q: value range too large to plot (x %g..%g, y %g..%g)", title, xmin, xmax, ymin, ymax)
	}
	xa, ya := newAxis(xmin, xmax), newAxis(ymin, ymax)

	var ra axis // right's scale: its lo maps to ya.lo and its hi to ya.hi
	if right != nil {
		ra = axis{lo: right.Value(ya.lo), hi: right.Value(ya.hi)}
		span := math.Abs(ra.hi - ra.lo)
		if !finite(span) || span == 0 {
			return fmt.Errorf("curves %q: the right axis %q maps the y range %g..%g to %g..%g", title, right.Label, ya.lo, ya.hi, ra.lo, ra.hi)
		}
		ra.step = roundStep(span / 6)
	}

	// Layout: the left margin fits the widest y label, the right one the
	// right axis's.
	const top, bottom, lineH = 40, 55, 13
	left, rightM := 20, 25
	for _, v := range ya.ticks() {
		left = max(left, textWidth(ya.label(v))+18)
	}
	if right != nil {
		for _, v := range ra.ticks() {
			rightM = max(rightM, textWidth(ra.label(v))+18)
		}
		rightM = max(rightM, textWidth(right.Label)/2+10)
	}
	plotArea := image.Rect(left, top, CurvesWidth-rightM, CurvesHeight-bottom)
	xa.p0, xa.p1 = float64(plotArea.Min.X), float64(plotArea.Max.X-1)
	ya.p0, ya.p1 = float64(plotArea.Max.Y-1), float64(plotArea.Min.Y)

	img := image.NewRGBA(image.Rect(0, 0, CurvesWidth, CurvesHeight))
	fillRect(img, img.Bounds(), white)
	drawText(img, (CurvesWidth-textWidth(title))/2, 24, title, black)

	for _, v := range xa.ticks() {
		px := int(math.Round(xa.pixel(v)))
		fillRect(img, image.Rect(px, plotArea.Min.Y, px+1, plotArea.Max.Y), gridGrey)
		fillRect(img, image.Rect(px, plotArea.Max.Y, px+1, plotArea.Max.Y+5), black)
		s := xa.label(v)
		drawText(img, px-textWidth(s)/2, plotArea.Max.Y+5+lineH, s, black)
	}
	for _, v := range ya.ticks() {
		py := int(math.Round(ya.pixel(v)))
		fillRect(img, image.Rect(plotArea.Min.X, py, plotArea.Max.X, py+1), gridGrey)
		fillRect(img, image.Rect(plotArea.Min.X-5, py, plotArea.Min.X, py+1), black)
		s := ya.label(v)
		drawText(img, plotArea.Min.X-8-textWidth(s), py+4, s, black)
	}
	if right != nil {
		ra.p0, ra.p1 = ya.p0, ya.p1
		for _, v := range ra.ticks() {
			py := int(math.Round(ra.pixel(v)))
			fillRect(img, image.Rect(plotArea.Max.X, py, plotArea.Max.X+5, py+1), black)
			drawText(img, plotArea.Max.X+8, py+4, ra.label(v), black)
		}
		fillRect(img, image.Rect(plotArea.Max.X, plotArea.Min.Y, plotArea.Max.X+1, plotArea.Max.Y+1), black)
		drawText(img, plotArea.Max.X-textWidth(right.Label)/2, plotArea.Min.Y-8, right.Label, black)
	}
	// Axes: left and bottom edges of the plot area.
	fillRect(img, image.Rect(plotArea.Min.X-1, plotArea.Min.Y, plotArea.Min.X, plotArea.Max.Y+1), black)
	fillRect(img, image.Rect(plotArea.Min.X-1, plotArea.Max.Y, plotArea.Max.X, plotArea.Max.Y+1), black)
	drawText(img, plotArea.Min.X+(plotArea.Dx()-textWidth(xlabel))/2, CurvesHeight-10, xlabel, black)

	for i, s := range series {
		c := palette[i%len(palette)]
		points := 0
		for j := range s.X {
			if finite(s.X[j]) && finite(s.Y[j]) {
				points++
			}
		}
		marks := points <= markerMax
		havePrev := false
		var px0, py0 float64
		for j := range s.X {
			if !finite(s.X[j]) || !finite(s.Y[j]) {
				continue
			}
			px, py := xa.pixel(s.X[j]), ya.pixel(s.Y[j])
			if havePrev {
				drawLine(img, px0, py0, px, py, c)
			}
			if marks {
				x, y := int(math.Round(px)), int(math.Round(py))
				fillRect(img, image.Rect(x-2, y-2, x+4, y+4), c)
			}
			px0, py0, havePrev = px, py, true
		}
	}
	drawLegend(img, plotArea, xa, ya, series)

	if err := png.Encode(w, img); err != nil {
		return fmt.Errorf("curves %q: encoding PNG: %w", title, err)
	}
	return nil
}

// drawLegend boxes the series names, each after a swatch of its colour, in
// the corner of the plot area that hides the fewest data points.
func drawLegend(img *image.RGBA, plotArea image.Rectangle, xa, ya axis, series []Series) {
	if len(series) == 0 {
		return
	}
	const pad, swatch, rowH, inset = 8, 20, 16, 10
	textW := 0
	for _, s := range series {
		textW = max(textW, textWidth(s.Name))
	}
	size := image.Pt(pad+swatch+6+textW+pad, pad+len(series)*rowH+pad-4)
	in := plotArea.Inset(inset)
	corners := []image.Point{ // top-right first: preferred on a tie
		{in.Max.X - size.X, in.Min.Y},
		{in.Min.X, in.Min.Y},
		{in.Max.X - size.X, in.Max.Y - size.Y},
		{in.Min.X, in.Max.Y - size.Y},
	}
	var box image.Rectangle
	fewest := -1
	for _, c := range corners {
		r := image.Rectangle{Min: c, Max: c.Add(size)}
		hidden := 0
		for _, s := range series {
			for j := range s.X {
				if finite(s.X[j]) && finite(s.Y[j]) &&
					image.Pt(int(xa.pixel(s.X[j])), int(ya.pixel(s.Y[j]))).In(r.Inset(-4)) {
					hidden++
				}
			}
		}
		if fewest < 0 || hidden < fewest {
			box, fewest = r, hidden
		}
	}
	fillRect(img, box, frameGrey)
	fillRect(img, box.Inset(1), white)
	for i, s := range series {
		c := palette[i%len(palette)]
		y := box.Min.Y + pad + i*rowH
		fillRect(img, image.Rect(box.Min.X+pad, y+5, box.Min.X+pad+swatch, y+8), c)
		drawText(img, box.Min.X+pad+swatch+6, y+10, s.Name, black)
	}
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
