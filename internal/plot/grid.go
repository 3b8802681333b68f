package plot

import (
	"fmt"
	"image"
	"image/png"
	"io"
	"math"
)

// Geometry of SampleGrid: each 28x28 tile is separated from its neighbours
// and the border by Gap pixels, and the whole grid is then enlarged Scale
// times, so an image with rows x cols tiles is
// Scale*(cols*(TileSide+Gap)+Gap) pixels wide and
// Scale*(rows*(TileSide+Gap)+Gap) high.
const (
	TileSide   = 28
	TilePixels = TileSide * TileSide
	Gap        = 2
	Scale      = 2
)

// GapGrey is the grey level of the gaps: mid-grey, distinct from both the
// black background and the white ink of a digit.
const GapGrey = 0x80

// SampleGrid writes a PNG showing xs as rows x cols greyscale tiles, row by
// row. xs holds rows*cols images of TilePixels intensities each (row-major,
// 0 black, 1 white); values outside [0,1] are clamped, NaN is drawn black.
func SampleGrid(w io.Writer, xs []float32, rows, cols int) error {
	if rows < 1 || cols < 1 {
		return fmt.Errorf("sample grid: %d x %d tiles: need at least one row and one column", rows, cols)
	}
	if len(xs) != rows*cols*TilePixels {
		return fmt.Errorf("sample grid: %d floats for %d x %d tiles, want %d (%d per tile)",
			len(xs), rows, cols, rows*cols*TilePixels, TilePixels)
	}
	const pitch = TileSide + Gap
	img := image.NewGray(image.Rect(0, 0, Scale*(cols*pitch+Gap), Scale*(rows*pitch+Gap)))
	for i := range img.Pix {
		img.Pix[i] = GapGrey
	}
	for t := range rows * cols {
		x0, y0 := Gap+(t%cols)*pitch, Gap+(t/cols)*pitch
		tile := xs[t*TilePixels : (t+1)*TilePixels]
		for r := range TileSide {
			for c := range TileSide {
				v := grey(tile[r*TileSide+c])
				for dy := range Scale {
					row := img.Pix[(Scale*(y0+r)+dy)*img.Stride:]
					for dx := range Scale {
						row[Scale*(x0+c)+dx] = v
					}
				}
			}
		}
	}
	if err := png.Encode(w, img); err != nil {
		return fmt.Errorf("sample grid: encoding PNG: %w", err)
	}
	return nil
}

// grey maps an intensity in [0,1] to 0..255, clamping and sending NaN to 0.
func grey(v float32) uint8 {
	switch {
	case !(v > 0): // also NaN
		return 0
	case v >= 1:
		return 255
	}
	return uint8(math.Round(float64(v) * 255))
}
