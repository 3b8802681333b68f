package flow

// Dense is one fully connected layer's parameters (or gradients, or moments):
// W is In x Out row-major, so a batch Y = X W + B.
type Dense struct {
	In, Out int
	W, B    []float32
}

// Coupling is one additive coupling's MLP: HiddenLayers+1 dense layers.
type Coupling struct {
	Layers []Dense
}

// Views are per-layer windows into one flat buffer laid out by Layout.
type Views struct {
	Couplings []Coupling
	// Scale is the log-scale s of the diagonal scaling, in natural pixel order.
	Scale []float32
}

// Layout fixes where every parameter lives in the flat buffer.
type Layout struct {
	cfg  Config
	size int
}

// NewLayout returns the layout of a model with config c (which must be valid).
func NewLayout(c Config) Layout {
	half := c.Dim / 2
	per := 0
	in := half
	for l := 0; l <= c.HiddenLayers; l++ {
		out := c.Hidden
		if l == c.HiddenLayers {
			out = half
		}
		per += in*out + out
		in = out
	}
	return Layout{cfg: c, size: c.Couplings*per + c.Dim}
}

// Size is the number of float32 values in a flat buffer.
func (l Layout) Size() int { return l.size }

// Views cuts buf (of length Size) into per-layer views that share its memory.
func (l Layout) Views(buf []float32) Views {
	if len(buf) != l.size {
		panic("flow: buffer length does not match the layout")
	}
	c := l.cfg
	half := c.Dim / 2
	v := Views{Couplings: make([]Coupling, c.Couplings)}
	off := 0
	take := func(n int) []float32 {
		s := buf[off : off+n : off+n]
		off += n
		return s
	}
	for k := range v.Couplings {
		layers := make([]Dense, c.HiddenLayers+1)
		in := half
		for j := range layers {
			out := c.Hidden
			if j == c.HiddenLayers {
				out = half
			}
			layers[j] = Dense{In: in, Out: out, W: take(in * out), B: take(out)}
			in = out
		}
		v.Couplings[k] = Coupling{Layers: layers}
	}
	v.Scale = take(c.Dim)
	return v
}
