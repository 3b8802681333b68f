package train

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/nice-flow/nice/internal/f32"
)

// Exported is a trained model without its optimiser state: the run's
// configuration (which holds the model's), where training stood, the
// scores it gathered, and the parameters. It is what `nice-coord export`
// writes; it can be sampled, scored and inpainted, not trained on exactly
// (Adam's moments are gone).
type Exported struct {
	Config   Config
	Position Position
	History  History
	Params   []float32
}

// Export returns the model part of s, sharing its parameter buffer.
func (s *State) Export() *Exported {
	return &Exported{Config: s.Config, Position: s.Position, History: s.History, Params: s.Params}
}

// exportHeader is the JSON part of an encoded Exported.
type exportHeader struct {
	Version  int      `json:"version"`
	Config   Config   `json:"config"`
	Position Position `json:"position"`
	History  History  `json:"history"`
	Floats   int      `json:"floats"`
}

const (
	exportMagic   = "NICEMODEL"
	exportVersion = 1
)

// ErrExportNotResumable is returned where an exported model is given to
// continue training: it has no Adam moments, so the trajectory could not
// continue exactly.
var ErrExportNotResumable = errors.New("an exported model holds no optimiser state: training cannot continue exactly from it")

// WriteTo encodes e as a state is encoded (see State.WriteTo) with its own
// magic and one float buffer: magic, a length-prefixed JSON header, the
// parameters as raw little-endian float32, and a sha256 of all that.
func (e *Exported) WriteTo(w io.Writer) (int64, error) {
	h := exportHeader{Version: exportVersion, Config: e.Config, Position: e.Position, History: e.History, Floats: len(e.Params)}
	js, err := json.Marshal(h)
	if err != nil {
		return 0, fmt.Errorf("encoding model header: %w", err)
	}
	sum := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, sum)}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(js)))
	for _, part := range [][]byte{[]byte(exportMagic), lenBuf[:], js, f32.Bytes(e.Params)} {
		for len(part) > 0 {
			k := min(len(part), pieceBytes)
			if _, err := cw.Write(part[:k]); err != nil {
				return cw.n, fmt.Errorf("writing model: %w", err)
			}
			part = part[k:]
		}
	}
	k, err := w.Write(sum.Sum(nil))
	return cw.n + int64(k), err
}

// ReadExported decodes a model written by Exported.WriteTo, verifying its
// checksum, with the bounds of ReadState: the header's float count must be
// its own configuration's model's, its length within MaxHeaderLen, and the
// parameter buffer grows with the data read unless r tells its length.
func ReadExported(r io.Reader) (*Exported, error) {
	sum := sha256.New()
	tr := io.TeeReader(r, sum)
	var h exportHeader
	hl, err := readHeader(tr, exportMagic, "an exported nice model", &h)
	if err != nil {
		return nil, err
	}
	if h.Version != exportVersion {
		return nil, fmt.Errorf("exported model version %d: this build reads version %d", h.Version, exportVersion)
	}
	if err := checkHeader(h.Config, h.Floats, int64(hl)); err != nil {
		return nil, err
	}
	held := -1
	if l, ok := r.(interface{ Len() int }); ok {
		held = l.Len()
	}
	if held >= 0 && int64(held) < 4*int64(h.Floats)+sumBytes {
		return nil, fmt.Errorf("%w: truncated data: %d bytes left for %d parameters", ErrCorruptState, held, h.Floats)
	}
	params, err := readFloats(tr, h.Floats, held >= 0)
	if err != nil {
		return nil, err
	}
	if err := checkSum(r, sum); err != nil {
		return nil, err
	}
	return &Exported{Config: h.Config, Position: h.Position, History: h.History, Params: params}, nil
}

// SaveFile writes e to path atomically and durably, as State.SaveFile does.
func (e *Exported) SaveFile(path string) error { return saveFile(path, e.WriteTo) }

// Saved is what a model file holds: a training state (State set) or an
// exported model (State nil). Model is set in both cases.
type Saved struct {
	State *State
	Model *Exported
}

// ReadSaved decodes either kind of file, told apart by its magic.
func ReadSaved(r io.Reader) (*Saved, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	magic, err := br.Peek(len(stateMagic))
	if err != nil {
		return nil, fmt.Errorf("%w: %d bytes: too short for a nice state or model", ErrCorruptState, len(magic))
	}
	switch string(magic) {
	case stateMagic:
		s, err := ReadState(br)
		if err != nil {
			return nil, err
		}
		return &Saved{State: s, Model: s.Export()}, nil
	case exportMagic:
		e, err := ReadExported(br)
		if err != nil {
			return nil, err
		}
		return &Saved{Model: e}, nil
	}
	return nil, fmt.Errorf("%w: neither a nice training state nor an exported model (bad magic)", ErrCorruptState)
}

// LoadSaved reads a training state (SaveFile's state.nice) or an exported
// model from path. Errors name the path.
func LoadSaved(path string) (*Saved, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("loading model: %w", err)
	}
	defer f.Close()
	s, err := ReadSaved(f)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", path, err)
	}
	return s, nil
}
