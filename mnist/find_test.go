package mnist

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEscapeModulePath(t *testing.T) {
	if got, want := escapeModulePath(DataModulePath), "github.com/petar/!go!m!n!i!s!t"; got != want {
		t.Errorf("escapeModulePath(%q) = %q, want %q", DataModulePath, got, want)
	}
}

// dataFolder makes dir hold four (empty) files with the MNIST names.
func dataFolder(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range Files {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestFindDir(t *testing.T) {
	root := t.TempDir()
	withLocal := filepath.Join(root, "withlocal")
	dataFolder(t, filepath.Join(withLocal, LocalDir))
	noLocal := filepath.Join(root, "nolocal")
	container := dataFolder(t, filepath.Join(root, "container"))
	envCache := filepath.Join(root, "envcache")
	dataFolder(t, moduleDataDir(envCache))
	goCache := filepath.Join(root, "gocache")
	dataFolder(t, moduleDataDir(goCache))
	gopath := filepath.Join(root, "gopath")
	dataFolder(t, moduleDataDir(filepath.Join(gopath, "pkg", "mod")))
	home := filepath.Join(root, "home")
	dataFolder(t, moduleDataDir(filepath.Join(home, "go", "pkg", "mod")))
	nowhere := filepath.Join(root, "nowhere")
	noGo := func() (string, error) { return "", errors.New("no go command") }

	for _, c := range []struct {
		name      string
		flag      string
		env       map[string]string
		wd        string
		container string
		goEnv     func() (string, error)
		home      string
		want      string
	}{
		{"flag wins", "/given", map[string]string{EnvDir: "/env"}, withLocal, container, noGo, home, "/given"},
		{"env next", "", map[string]string{EnvDir: "/env"}, withLocal, container, noGo, home, "/env"},
		{"local folder", "", nil, withLocal, container, noGo, home, filepath.Join(withLocal, LocalDir)},
		{"container folder", "", nil, noLocal, container, noGo, home, container},
		{"GOMODCACHE", "", map[string]string{"GOMODCACHE": envCache, "GOPATH": gopath}, noLocal, nowhere,
			func() (string, error) { return goCache, nil }, home, moduleDataDir(envCache)},
		{"go env", "", map[string]string{"GOPATH": gopath}, noLocal, nowhere,
			func() (string, error) { return goCache, nil }, home, moduleDataDir(goCache)},
		{"GOPATH", "", map[string]string{"GOPATH": gopath + string(filepath.ListSeparator) + nowhere}, noLocal, nowhere,
			noGo, home, moduleDataDir(filepath.Join(gopath, "pkg", "mod"))},
		{"home", "", nil, noLocal, nowhere, noGo, home, moduleDataDir(filepath.Join(home, "go", "pkg", "mod"))},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := locator{
				getenv:       func(k string) string { return c.env[k] },
				getwd:        func() (string, error) { return c.wd, nil },
				containerDir: c.container,
				goEnvModDir:  c.goEnv,
				homeDir:      func() (string, error) { return c.home, nil },
			}
			got, err := l.find(c.flag)
			if err != nil || got != c.want {
				t.Errorf("find(%q) = %q, %v; want %q", c.flag, got, err, c.want)
			}
		})
	}
}

func TestFindDirNothing(t *testing.T) {
	root := t.TempDir()
	partial := filepath.Join(root, "wd", LocalDir)
	if err := os.MkdirAll(partial, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(partial, TrainImagesFile), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(root, "cache")
	l := locator{
		getenv:       func(k string) string { return map[string]string{"GOMODCACHE": cache}[k] },
		getwd:        func() (string, error) { return filepath.Join(root, "wd"), nil },
		containerDir: filepath.Join(root, "container"),
		goEnvModDir:  func() (string, error) { return "", errors.New("no go command") },
		homeDir:      func() (string, error) { return "", errors.New("no home") },
	}
	_, err := l.find("")
	if !errors.Is(err, ErrMissing) {
		t.Fatalf("find with no data: %v, want ErrMissing", err)
	}
	msg := err.Error()
	for _, want := range []string{
		"--data flag: not given",
		EnvDir + ": not set",
		partial + "): missing " + TrainLabelsFile + ", " + TestImagesFile + ", " + TestLabelsFile,
		filepath.Join(root, "container") + "): does not exist",
		moduleDataDir(cache) + "): does not exist",
		HowToGet,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
}

func TestFindDirSystem(t *testing.T) {
	// The real module cache as the go command reports it, with nothing else set.
	t.Setenv(EnvDir, "")
	t.Chdir(t.TempDir())
	dir, err := FindDir("")
	if errors.Is(err, ErrMissing) {
		t.Skipf("no MNIST files in the module cache: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if missingFiles(dir) != "" {
		t.Errorf("FindDir returned %s, which lacks the files", dir)
	}
}
