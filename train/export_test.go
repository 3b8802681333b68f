package train

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func exportedBlob(t *testing.T) (*State, []byte) {
	t.Helper()
	tr := mustTrainer(t, tinyConfig(), syntheticData())
	steps(t, tr, 3)
	st := tr.State()
	var b bytes.Buffer
	n, err := st.Export().WriteTo(&b)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(b.Len()) {
		t.Fatalf("WriteTo says %d bytes, wrote %d", n, b.Len())
	}
	return st, b.Bytes()
}

// An export holds the configuration, position, history and parameters,
// bit for bit, and a quarter of a state's floats (no Adam moments).
func TestExportRoundTrip(t *testing.T) {
	st, blob := exportedBlob(t)
	for _, name := range []string{"bytes.Reader", "plain reader"} {
		var r interface{ Read([]byte) (int, error) } = bytes.NewReader(blob)
		if name == "plain reader" {
			r = struct{ *bytes.Buffer }{bytes.NewBuffer(slices.Clone(blob))}
		}
		e, err := ReadExported(r)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if e.Config != st.Config || e.Position != st.Position || !slices.Equal(e.History.Points, st.History.Points) {
			t.Fatalf("%s: header %+v %+v, want %+v %+v", name, e.Config, e.Position, st.Config, st.Position)
		}
		if !sameBits(e.Params, st.Params) {
			t.Fatalf("%s: parameters differ", name)
		}
	}
	full, err := st.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(blob) >= len(full)/2 {
		t.Fatalf("an export of %d bytes, the state %d: the moments should be gone", len(blob), len(full))
	}
}

// Every damage is refused with ErrCorruptState: nothing half-read is
// returned.
func TestCorruptExportIsRefused(t *testing.T) {
	_, blob := exportedBlob(t)
	hl := binary.LittleEndian.Uint64(blob[len(exportMagic):])
	for name, damage := range map[string]func([]byte) []byte{
		"flipped parameter byte": func(b []byte) []byte { b[len(b)-100] ^= 1; return b },
		"flipped header byte":    func(b []byte) []byte { b[len(exportMagic)+8+5] ^= 0x20; return b },
		"truncated data":         func(b []byte) []byte { return b[:len(b)-100] },
		"truncated checksum":     func(b []byte) []byte { return b[:len(b)-5] },
		"truncated header":       func(b []byte) []byte { return b[:len(exportMagic)+8+int(hl)/2] },
		"empty":                  func(b []byte) []byte { return nil },
		"bad magic":              func(b []byte) []byte { b[0] = 'X'; return b },
		"huge header length": func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[len(exportMagic):], 1<<40)
			return b
		},
		"a state's magic": func(b []byte) []byte { copy(b, stateMagic); return b },
	} {
		t.Run(name, func(t *testing.T) {
			b := damage(slices.Clone(blob))
			for _, r := range []func() interface{ Read([]byte) (int, error) }{
				func() interface{ Read([]byte) (int, error) } { return bytes.NewReader(b) },
				func() interface{ Read([]byte) (int, error) } { return struct{ *bytes.Buffer }{bytes.NewBuffer(b)} },
			} {
				e, err := ReadExported(r())
				if !errors.Is(err, ErrCorruptState) || e != nil {
					t.Fatalf("got %v, %v; want ErrCorruptState", e, err)
				}
			}
		})
	}
}

// A header announcing a model other than its configuration's is refused
// before the parameters are read.
func TestExportWithWrongFloatCountIsRefused(t *testing.T) {
	st, _ := exportedBlob(t)
	e := st.Export()
	e.Params = e.Params[:len(e.Params)-1]
	var b bytes.Buffer
	if _, err := e.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	_, err := ReadExported(&b)
	if !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), "floats") {
		t.Fatalf("got %v", err)
	}
}

// LoadSaved tells a state from an export and says which it read.
func TestLoadSavedReadsBothKinds(t *testing.T) {
	st, blob := exportedBlob(t)
	dir := t.TempDir()
	statePath, modelPath := filepath.Join(dir, "state.nice"), filepath.Join(dir, "model.nice")
	if err := st.SaveFile(statePath); err != nil {
		t.Fatal(err)
	}
	if err := st.Export().SaveFile(modelPath); err != nil {
		t.Fatal(err)
	}
	if onDisk, err := os.ReadFile(modelPath); err != nil || !bytes.Equal(onDisk, blob) {
		t.Fatalf("SaveFile wrote something else than WriteTo (%v)", err)
	}
	s, err := LoadSaved(statePath)
	if err != nil {
		t.Fatal(err)
	}
	if s.State == nil || !sameBits(s.State.M, st.M) || !sameBits(s.Model.Params, st.Params) {
		t.Fatal("the state file did not load as a state with its parameters")
	}
	m, err := LoadSaved(modelPath)
	if err != nil {
		t.Fatal(err)
	}
	if m.State != nil || !sameBits(m.Model.Params, st.Params) || m.Model.Position != st.Position {
		t.Fatal("the export did not load as an export with its parameters")
	}
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("hello, this is not a model"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSaved(junk); !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), junk) {
		t.Fatalf("junk: %v", err)
	}
	if _, err := LoadSaved(filepath.Join(dir, "absent")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("absent: %v", err)
	}
}
