package mnist

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Names of the four original MNIST files.
const (
	TrainImagesFile = "train-images-idx3-ubyte.gz"
	TrainLabelsFile = "train-labels-idx1-ubyte.gz"
	TestImagesFile  = "t10k-images-idx3-ubyte.gz"
	TestLabelsFile  = "t10k-labels-idx1-ubyte.gz"
)

// Files lists the four file names Load needs in one folder.
var Files = [4]string{TrainImagesFile, TrainLabelsFile, TestImagesFile, TestLabelsFile}

// IDX magic numbers: two zero bytes, type 0x08 (unsigned byte), number of
// dimensions.
const (
	imagesMagic = 0x00000803
	labelsMagic = 0x00000801
)

// idxFile describes one expected file: its sha256 and its IDX header.
type idxFile struct {
	name   string
	sha256 string
	magic  uint32
	dims   []int
}

// The sha256 digests of the published .gz files (as shipped by the GoMNIST
// module, whose go.sum hash covers them too).
var (
	trainImages = idxFile{TrainImagesFile, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", imagesMagic, []int{TrainSize, Rows, Cols}}
	trainLabels = idxFile{TrainLabelsFile, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", labelsMagic, []int{TrainSize}}
	testImages  = idxFile{TestImagesFile, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", imagesMagic, []int{TestSize, Rows, Cols}}
	testLabels  = idxFile{TestLabelsFile, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", labelsMagic, []int{TestSize}}
)

// Load reads the training (60,000) and test (10,000) sets from the four IDX
// .gz files in dir. Each file must match its published sha256 and carry the
// expected IDX header; otherwise Load returns a *FileError naming the file,
// wrapping ErrMissing or ErrCorrupt, and saying how to get good files.
func Load(dir string) (train, test *Set, err error) {
	if train, err = loadSet(dir, trainImages, trainLabels); err != nil {
		return nil, nil, fmt.Errorf("loading MNIST training set: %w", err)
	}
	if test, err = loadSet(dir, testImages, testLabels); err != nil {
		return nil, nil, fmt.Errorf("loading MNIST test set: %w", err)
	}
	return train, test, nil
}

func loadSet(dir string, images, labels idxFile) (*Set, error) {
	// Labels first: they are small, so a bad file is reported at once.
	lab, err := readIDX(filepath.Join(dir, labels.name), labels)
	if err != nil {
		return nil, err
	}
	pix, err := readIDX(filepath.Join(dir, images.name), images)
	if err != nil {
		return nil, err
	}
	return &Set{N: images.dims[0], Images: pix, Labels: lab}, nil
}

// readIDX reads, checks and decompresses one file, returning its payload.
// Structural problems (truncation, bad magic) are reported in preference to
// the bare checksum mismatch, as they say more about what went wrong.
func readIDX(path string, want idxFile) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &FileError{Path: path, Problem: "missing", Kind: ErrMissing}
		}
		return nil, &FileError{Path: path, Problem: "cannot read", Err: err}
	}
	sum := sha256.Sum256(raw)
	got := hex.EncodeToString(sum[:])
	payload, ferr := parseIDX(raw, want)
	if ferr != nil {
		ferr.Path = path
		if got != want.sha256 {
			ferr.Problem += fmt.Sprintf(" (%d bytes; checksum mismatch: sha256 got %s want %s)", len(raw), got, want.sha256)
		}
		return nil, ferr
	}
	if got != want.sha256 {
		return nil, &FileError{
			Path:    path,
			Problem: fmt.Sprintf("checksum mismatch: sha256 got %s want %s", got, want.sha256),
			Kind:    ErrCorrupt,
		}
	}
	return payload, nil
}

// parseIDX decompresses raw and checks the IDX header against want. The
// returned error has no Path yet.
func parseIDX(raw []byte, want idxFile) ([]byte, *FileError) {
	corrupt := func(problem string, err error) *FileError {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			problem, err = "truncated", nil
		}
		return &FileError{Problem: problem, Kind: ErrCorrupt, Err: err}
	}
	z, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, corrupt("not a gzip file", err)
	}
	header := make([]byte, 4+4*len(want.dims))
	if _, err := io.ReadFull(z, header); err != nil {
		return nil, corrupt("reading IDX header", err)
	}
	if magic := binary.BigEndian.Uint32(header); magic != want.magic {
		return nil, corrupt(fmt.Sprintf("bad magic 0x%08x, want 0x%08x", magic, want.magic), nil)
	}
	size := 1
	for i, d := range want.dims {
		if got := int(binary.BigEndian.Uint32(header[4+4*i:])); got != d {
			return nil, corrupt(fmt.Sprintf("dimension %d is %d, want %d", i, got, d), nil)
		}
		size *= d
	}
	payload := make([]byte, size)
	if _, err := io.ReadFull(z, payload); err != nil {
		return nil, corrupt("reading IDX data", err)
	}
	// Read on to the end so gzip verifies its CRC and length trailer.
	var extra [1]byte
	switch n, err := io.ReadFull(z, extra[:]); {
	case n > 0:
		return nil, corrupt("trailing data after the IDX payload", nil)
	case err != io.EOF:
		return nil, corrupt("corrupt gzip stream", err)
	}
	return payload, nil
}
