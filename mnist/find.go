package mnist

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Places FindDir looks, in order after the flag and the environment.
const (
	// EnvDir names the environment variable that points at the data folder.
	EnvDir = "NICE_MNIST_DIR"
	// LocalDir is tried relative to the working directory.
	LocalDir = "data/mnist"
	// ContainerDir is where the container image keeps the files.
	ContainerDir = "/mnist"
)

// FindDir returns the folder that holds the four MNIST files:
//
//  1. flagValue, if not empty (returned as is; Load reports what is wrong);
//  2. else $NICE_MNIST_DIR, if set (likewise);
//  3. else ./data/mnist, if it holds the four files;
//  4. else /mnist, if it holds them;
//  5. else the data folder of the GoMNIST module in the Go module cache, if it
//     holds them. The cache is $GOMODCACHE, else what `go env GOMODCACHE`
//     prints, else $GOPATH/pkg/mod, else $HOME/go/pkg/mod.
//
// If none does, the error wraps ErrMissing, lists every place tried and what
// was wrong there, and says how to get the files.
func FindDir(flagValue string) (string, error) {
	return systemLocator().find(flagValue)
}

// locator holds FindDir's view of the environment, so tests can fake it.
type locator struct {
	getenv       func(string) string
	getwd        func() (string, error)
	containerDir string
	goEnvModDir  func() (string, error) // runs `go env GOMODCACHE`
	homeDir      func() (string, error)
}

func systemLocator() locator {
	return locator{
		getenv:       os.Getenv,
		getwd:        os.Getwd,
		containerDir: ContainerDir,
		goEnvModDir:  goEnvModCache,
		homeDir:      os.UserHomeDir,
	}
}

func (l locator) find(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if dir := l.getenv(EnvDir); dir != "" {
		return dir, nil
	}
	tried := []string{"--data flag: not given", EnvDir + ": not set"}
	try := func(label, dir string) bool {
		problem := missingFiles(dir)
		if problem == "" {
			return true
		}
		tried = append(tried, fmt.Sprintf("%s (%s): %s", label, dir, problem))
		return false
	}
	if wd, err := l.getwd(); err != nil {
		tried = append(tried, fmt.Sprintf("./%s: cannot get working directory: %v", LocalDir, err))
	} else if dir := filepath.Join(wd, LocalDir); try("./"+LocalDir, dir) {
		return dir, nil
	}
	if try("container folder", l.containerDir) {
		return l.containerDir, nil
	}
	cache, how, err := l.moduleCache()
	if err != nil {
		tried = append(tried, "Go module cache: "+err.Error())
	} else if dir := moduleDataDir(cache); try("Go module cache from "+how, dir) {
		return dir, nil
	}
	return "", fmt.Errorf("%w: no folder holds the four IDX .gz files; tried %s; to get them %s",
		ErrMissing, strings.Join(tried, "; "), HowToGet)
}

// moduleCache returns the Go module cache root and where that answer came from.
func (l locator) moduleCache() (dir, how string, err error) {
	if dir := l.getenv("GOMODCACHE"); dir != "" {
		return dir, "$GOMODCACHE", nil
	}
	dir, goErr := l.goEnvModDir()
	if goErr == nil && dir != "" {
		return dir, "`go env GOMODCACHE`", nil
	}
	if gopath := l.getenv("GOPATH"); gopath != "" {
		first := filepath.SplitList(gopath)[0]
		return filepath.Join(first, "pkg", "mod"), "$GOPATH", nil
	}
	home, err := l.homeDir()
	if err != nil {
		return "", "", fmt.Errorf("GOMODCACHE and GOPATH unset, `go env` failed (%v) and no home directory: %w", goErr, err)
	}
	return filepath.Join(home, "go", "pkg", "mod"), "$HOME/go/pkg/mod", nil
}

// goEnvModCache asks the go command where its module cache is. It fails
// cleanly where there is no go command (as in the container image).
func goEnvModCache() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "env", "GOMODCACHE").Output()
	if err != nil {
		return "", fmt.Errorf("running go env GOMODCACHE: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// moduleDataDir is the data folder of the GoMNIST module inside cache.
func moduleDataDir(cache string) string {
	rel := escapeModulePath(DataModulePath) + "@" + DataModuleVersion
	return filepath.Join(cache, filepath.FromSlash(rel), "data")
}

// escapeModulePath applies the module cache's case encoding: each upper-case
// letter becomes '!' followed by its lower-case form, so paths stay distinct
// on case-insensitive file systems.
func escapeModulePath(path string) string {
	var b strings.Builder
	for _, r := range path {
		if 'A' <= r && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// missingFiles returns "" if dir holds the four files as regular files, and
// otherwise what is wrong.
func missingFiles(dir string) string {
	info, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "does not exist"
	case err != nil:
		return err.Error()
	case !info.IsDir():
		return "not a folder"
	}
	var missing []string
	for _, name := range Files {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || !fi.Mode().IsRegular() {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return "missing " + strings.Join(missing, ", ")
	}
	return ""
}
