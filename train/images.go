package train

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/nice-flow/nice/flow"
	"github.com/nice-flow/nice/internal/plot"
)

// WriteEpochImages writes into dir a grid of n samples of m as
// samples-eNNN.png (n = 0: none), the learning curves of h as curves.png, and
// the eval log-likelihood (nats per image, bits/dim on the right) beside the
// paper's figure against epochs (ll-epochs.png) and, when h's epochs are
// timed, against minutes of training (ll-minutes.png).
// Each file is written to a temporary name and renamed, so readers never see
// half a PNG.
func WriteEpochImages(dir string, m *flow.Model, h History, evalName string, epoch, n int, seed uint64) error {
	if n > 0 {
		cols := 1
		for cols*cols < n {
			cols++
		}
		rows := (n + cols - 1) / cols
		ws := flow.NewWorkspace(m.Config, min(256, rows*cols))
		xs := Samples(m, ws, rows*cols, seed)
		if err := WritePNG(filepath.Join(dir, fmt.Sprintf("samples-e%03d.png", epoch)), func(f *os.File) error {
			return plot.SampleGrid(f, xs, rows, cols)
		}); err != nil {
			return err
		}
	}
	if err := WritePNG(filepath.Join(dir, "curves.png"), func(f *os.File) error {
		return plot.Curves(f, "NICE on MNIST: negative log-likelihood (nats per image)", "epoch", curveSeries(h, evalName)...)
	}); err != nil {
		return err
	}
	if len(h.Epochs) == 0 {
		return nil
	}
	title := "NICE on MNIST: " + evalName + " log-likelihood (nats per image)"
	bpd := &plot.RightAxis{Label: "bits/dim", Value: func(ll float64) float64 { return BitsPerDim(ll, m.Config.Dim) }}
	if err := WritePNG(filepath.Join(dir, "ll-epochs.png"), func(f *os.File) error {
		return plot.CurvesWithRight(f, title, "epoch", bpd, llSeries(h, evalName, func(e EpochResult) float64 { return float64(e.Epoch) })...)
	}); err != nil {
		return err
	}
	if h.Epochs[len(h.Epochs)-1].Elapsed == 0 {
		return nil // not timed (a cluster's history)
	}
	return WritePNG(filepath.Join(dir, "ll-minutes.png"), func(f *os.File) error {
		return plot.CurvesWithRight(f, title, "minutes of training", bpd, llSeries(h, evalName, func(e EpochResult) float64 { return e.Elapsed / 60 })...)
	})
}

// PaperLL is the test log-likelihood the NICE paper reports on MNIST (nats per
// image, after 1,500 epochs).
const PaperLL = 1980.50

// llSeries is the eval log-likelihood of each epoch against x(epoch), beside a
// level line at the paper's final figure.
func llSeries(h History, evalName string, x func(EpochResult) float64) []plot.Series {
	s := plot.Series{Name: evalName + " LL"}
	for _, e := range h.Epochs {
		s.X = append(s.X, x(e))
		s.Y = append(s.Y, e.TestLL)
	}
	end := s.X[len(s.X)-1]
	paper := plot.Series{Name: "the paper, 1,500 epochs", X: []float64{0, end}, Y: []float64{PaperLL, PaperLL}}
	return []plot.Series{s, paper}
}

func curveSeries(h History, evalName string) []plot.Series {
	trainS := plot.Series{Name: "train NLL"}
	for _, p := range h.Points {
		trainS.X = append(trainS.X, p.Epoch)
		trainS.Y = append(trainS.Y, p.TrainNLL)
	}
	evalS := plot.Series{Name: evalName + " NLL"}
	for _, e := range h.Epochs {
		evalS.X = append(evalS.X, float64(e.Epoch))
		evalS.Y = append(evalS.Y, -e.TestLL)
	}
	return []plot.Series{trainS, evalS}
}

// WritePNG writes a PNG produced by draw to path through a temporary file.
func WritePNG(path string, draw func(*os.File) error) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := draw(f); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}
