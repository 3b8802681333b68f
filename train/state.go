package train

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/nice-flow/nice/internal/f32"
)

// Point is one entry of the training-loss history.
type Point struct {
	Step     int64   `json:"step"`
	Epoch    float64 `json:"epoch"`
	TrainNLL float64 `json:"train_nll"`
}

// EpochResult is what one epoch achieved.
type EpochResult struct {
	Epoch         int     `json:"epoch"` // 1-based: the number of epochs completed
	Step          int64   `json:"step"`
	TrainNLL      float64 `json:"train_nll"`
	TestLL        float64 `json:"test_ll"`
	BitsPerDim    float64 `json:"bits_per_dim"`
	SamplesPerSec float64 `json:"samples_per_sec"`
	// Elapsed is the wall-clock seconds of training (and scoring) since the
	// run began, where the process that trained it measured them.
	Elapsed float64 `json:"elapsed_s,omitempty"`
}

// History is the metrics a run has gathered.
type History struct {
	Points []Point       `json:"points"`
	Epochs []EpochResult `json:"epochs"`
}

// State is everything needed to continue training exactly.
type State struct {
	Config   Config
	Position Position
	AdamStep int64
	History  History
	// LossSum and LossN accumulate the training NLL since the last history
	// point, so a resumed run records the same history.
	LossSum float64
	LossN   int
	// Params, M and V are the flat parameter buffer and Adam's moments.
	Params, M, V []float32
}

// header is the JSON part of an encoded State.
type header struct {
	Version  int      `json:"version"`
	Config   Config   `json:"config"`
	Position Position `json:"position"`
	AdamStep int64    `json:"adam_step"`
	History  History  `json:"history"`
	LossSum  float64  `json:"loss_sum"`
	LossN    int      `json:"loss_n"`
	Floats   int      `json:"floats"`
}

const (
	stateMagic   = "NICESTATE"
	stateVersion = 1
	// maxHeader bounds the JSON header so a corrupt length cannot make the
	// reader allocate without limit.
	maxHeader = 64 << 20
)

// ErrCorruptState is wrapped by every error about a damaged encoded state.
var ErrCorruptState = errors.New("training state is corrupt")

// WriteTo encodes s: magic, a length-prefixed JSON header, the three float
// buffers as raw little-endian float32, and a sha256 of all that.
func (s *State) WriteTo(w io.Writer) (int64, error) {
	n := len(s.Params)
	if len(s.M) != n || len(s.V) != n {
		return 0, fmt.Errorf("encoding state: %d params but %d and %d moments", n, len(s.M), len(s.V))
	}
	h := header{Version: stateVersion, Config: s.Config, Position: s.Position, AdamStep: s.AdamStep, History: s.History, LossSum: s.LossSum, LossN: s.LossN, Floats: n}
	js, err := json.Marshal(h)
	if err != nil {
		return 0, fmt.Errorf("encoding state header: %w", err)
	}
	sum := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, sum)}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(js)))
	for _, part := range [][]byte{[]byte(stateMagic), lenBuf[:], js, f32.Bytes(s.Params), f32.Bytes(s.M), f32.Bytes(s.V)} {
		// In pieces: one write of 77 MB (a copy and a hash that cannot be
		// preempted) stalls the process's other goroutines (see copyFloats).
		for len(part) > 0 {
			k := min(len(part), pieceBytes)
			if _, err := cw.Write(part[:k]); err != nil {
				return cw.n, fmt.Errorf("writing state: %w", err)
			}
			part = part[k:]
		}
	}
	k, err := w.Write(sum.Sum(nil))
	return cw.n + int64(k), err
}

// Encode returns s encoded as WriteTo writes it. It fails on a malformed
// state: buffers of different sizes, or a non-finite number in the header
// (JSON has no NaN).
func (s *State) Encode() ([]byte, error) {
	var b bytes.Buffer
	b.Grow(len(s.Params)*12 + 1<<16)
	if _, err := s.WriteTo(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// ReadState decodes a State written by WriteTo, verifying its checksum.
//
// It allocates only what the input holds and what the header's own
// configuration needs: the header is read as it arrives (its length field
// is not trusted), its float count must be that of its configuration's
// model and its size within MaxHeaderLen, and the float buffers grow with
// the data read, unless r tells how many bytes it holds (Len, as a
// bytes.Reader does) and that is enough for them.
func ReadState(r io.Reader) (*State, error) {
	sum := sha256.New()
	tr := io.TeeReader(r, sum)
	var h header
	hl, err := readHeader(tr, stateMagic, "a nice training state", &h)
	if err != nil {
		return nil, err
	}
	if h.Version != stateVersion {
		return nil, fmt.Errorf("training state version %d: this build reads version %d", h.Version, stateVersion)
	}
	if err := checkHeader(h.Config, h.Floats, int64(hl)); err != nil {
		return nil, err
	}
	s := &State{Config: h.Config, Position: h.Position, AdamStep: h.AdamStep, History: h.History, LossSum: h.LossSum, LossN: h.LossN}
	held := -1 // bytes r says it still holds, if it says
	if l, ok := r.(interface{ Len() int }); ok {
		held = l.Len()
	}
	if held >= 0 && int64(held) < 12*int64(h.Floats)+sumBytes {
		return nil, fmt.Errorf("%w: truncated data: %d bytes left for %d floats of each of 3 buffers", ErrCorruptState, held, h.Floats)
	}
	for _, p := range []*[]float32{&s.Params, &s.M, &s.V} {
		var err error
		if *p, err = readFloats(tr, h.Floats, held >= 0); err != nil {
			return nil, err
		}
	}
	return s, checkSum(r, sum)
}

// checkHeader refuses a header whose configuration is invalid, whose float
// count is not its model's, or that is larger than a run of its
// configuration can make.
// readHeader reads the magic, the header's length (bounded by maxHeader)
// and the JSON header into h, which every file of ours starts with; what
// names the kind of file in the error for a wrong magic. It returns the
// header's length.
func readHeader(r io.Reader, magic, what string, h any) (uint64, error) {
	got := make([]byte, len(magic))
	if _, err := io.ReadFull(r, got); err != nil || string(got) != magic {
		return 0, fmt.Errorf("%w: not %s (bad magic)", ErrCorruptState, what)
	}
	var lenBuf [8]byte
	if _, err := io.ReadFull(r, lenBuf[:]); err != nil {
		return 0, fmt.Errorf("%w: truncated header: %v", ErrCorruptState, err)
	}
	hl := binary.LittleEndian.Uint64(lenBuf[:])
	if hl > maxHeader {
		return 0, fmt.Errorf("%w: header length %d is above the limit of %d", ErrCorruptState, hl, maxHeader)
	}
	var js bytes.Buffer
	if _, err := io.CopyN(&js, r, int64(hl)); err != nil {
		return 0, fmt.Errorf("%w: truncated header: %v", ErrCorruptState, err)
	}
	if err := json.Unmarshal(js.Bytes(), h); err != nil {
		return 0, fmt.Errorf("%w: header: %v", ErrCorruptState, err)
	}
	return hl, nil
}

func checkHeader(c Config, floats int, size int64) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("%w: the header's configuration: %v", ErrCorruptState, err)
	}
	want, err := ModelFloats(c.Model)
	if err != nil {
		return fmt.Errorf("%w: the header's model: %v", ErrCorruptState, err)
	}
	if floats != want {
		return fmt.Errorf("%w: the header announces %d floats per buffer, its model (%d couplings of %d hidden layers of %d) has %d",
			ErrCorruptState, floats, c.Model.Couplings, c.Model.HiddenLayers, c.Model.Hidden, want)
	}
	most, err := MaxHeaderLen(c)
	if err != nil {
		return fmt.Errorf("%w: the header's configuration: %v", ErrCorruptState, err)
	}
	if size > most {
		return fmt.Errorf("%w: header of %d bytes, a run of its configuration makes at most %d", ErrCorruptState, size, most)
	}
	return nil
}

// readFloats reads n floats. When the input is known to hold them (whole)
// the buffer is allocated at once; otherwise it grows with what arrives, so
// a short input cannot make it allocate n floats.
func readFloats(r io.Reader, n int, whole bool) ([]float32, error) {
	const piece = pieceBytes / 4
	capacity := n
	if !whole {
		capacity = min(n, piece)
	}
	f := make([]float32, 0, capacity)
	for len(f) < n {
		k := min(n-len(f), piece) // in pieces, as WriteTo writes
		if cap(f)-len(f) < k {
			f = slices.Grow(f, min(n, 2*cap(f))-len(f))
		}
		b := f32.Bytes(f[len(f) : len(f)+k])
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, fmt.Errorf("%w: truncated data: %v", ErrCorruptState, err)
		}
		f = f[:len(f)+k]
	}
	return f, nil
}

func checkSum(r io.Reader, sum hash.Hash) error {
	want := sum.Sum(nil)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r, got); err != nil {
		return fmt.Errorf("%w: missing checksum: %v", ErrCorruptState, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%w: sha256 mismatch", ErrCorruptState)
	}
	return nil
}

// DecodeState decodes an encoded State held in memory.
func DecodeState(b []byte) (*State, error) { return ReadState(bytes.NewReader(b)) }

// SaveFile writes s to path atomically and durably: a temporary file in the
// same folder, synced, renamed over path, then the folder synced, so a crash
// leaves the old state or the new one, never a mix, and once SaveFile
// returns nil the new one survives a power cut. Every error names path.
func (s *State) SaveFile(path string) error {
	return saveFile(path, s.WriteTo)
}

// saveFile writes what write writes to path, atomically and durably (see
// State.SaveFile).
func saveFile(path string, write func(io.Writer) (int64, error)) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return fmt.Errorf("saving state to %s: %w", path, err)
	}
	defer os.Remove(f.Name()) // no-op after the rename
	bw := bufio.NewWriterSize(f, 1<<20)
	if _, err := write(bw); err != nil {
		f.Close()
		return fmt.Errorf("saving state to %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("saving state to %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("saving state to %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("saving state to %s: %w", path, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("saving state to %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("saving state to %s: %w", path, err)
	}
	// The rename lives in the folder: until the folder is synced a crash
	// can bring back the old state, or no file at all.
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("saving state to %s: renamed into place, but a crash may undo it: %w", path, err)
	}
	return nil
}

// syncDir flushes a folder's entries (names created, renamed or removed in
// it) to the disk.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening folder %s to sync it: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("syncing folder %s: %w", dir, err)
	}
	return nil
}

// LoadFile reads a State saved by SaveFile.
func LoadFile(path string) (*State, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("loading state: %w", err)
	}
	defer f.Close()
	s, err := ReadState(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("loading state %s: %w", path, err)
	}
	return s, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
