package creds

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func generate(t *testing.T) *Bundle {
	t.Helper()
	b, err := Generate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWriteLoadRoundTrip(t *testing.T) {
	b := generate(t)
	dir := filepath.Join(t.TempDir(), "creds")
	written, err := b.Write(dir, WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(written) != len(Files) {
		t.Fatalf("wrote %v, want the %d files %v", written, len(Files), Files)
	}
	wantMode := map[string]os.FileMode{CAFile: 0o644, CertFile: 0o644, KeyFile: 0o600, GossipKeyFile: 0o600}
	for name, mode := range wantMode {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s has mode %04o, want %04o", name, st.Mode().Perm(), mode)
		}
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("the folder: %v, mode %04o; want 0700", err, st.Mode().Perm())
	}
	l, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if l.Fingerprint() != b.Fingerprint() || string(l.GossipKey()) != string(b.GossipKey()) || len(l.GossipKey()) != GossipKeyBytes {
		t.Fatalf("loaded CA %s key %x, wrote CA %s key %x", l.Fingerprint(), l.GossipKey(), b.Fingerprint(), b.GossipKey())
	}
	if l.Dir != dir {
		t.Errorf("Dir = %q, want %q", l.Dir, dir)
	}
}

func TestWriteRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	first := generate(t)
	if _, err := first.Write(dir, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	second := generate(t)
	_, err := second.Write(dir, WriteOptions{})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second Write without Force: %v; want ErrExists naming --force", err)
	}
	if l, err := Load(dir); err != nil || l.Fingerprint() != first.Fingerprint() {
		t.Fatalf("after a refused Write the folder holds CA %s (err %v), want the first %s", l.Fingerprint(), err, first.Fingerprint())
	}
	if _, err := second.Write(dir, WriteOptions{Force: true, GroupReadable: true}); err != nil {
		t.Fatal(err)
	}
	l, err := Load(dir)
	if err != nil || l.Fingerprint() != second.Fingerprint() {
		t.Fatalf("after Force the folder holds CA %s (err %v), want %s", l.Fingerprint(), err, second.Fingerprint())
	}
	if st, _ := os.Stat(filepath.Join(dir, KeyFile)); st.Mode().Perm() != 0o640 {
		t.Errorf("GroupReadable key mode %04o, want 0640", st.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

func TestLoadNamesTheProblem(t *testing.T) {
	a, b := generate(t), generate(t)
	cases := []struct {
		name  string
		setup func(dir string)
		want  []string
	}{
		{"no folder", func(dir string) { os.RemoveAll(dir) }, []string{CAFile, "does not exist", "nice-coord init --dir"}},
		{"a file missing", func(dir string) { os.Remove(filepath.Join(dir, GossipKeyFile)) }, []string{GossipKeyFile, "does not exist"}},
		{"files of two inits", func(dir string) {
			other := filepath.Join(dir, "other")
			if _, err := b.Write(other, WriteOptions{}); err != nil {
				t.Fatal(err)
			}
			os.Rename(filepath.Join(other, CAFile), filepath.Join(dir, CAFile))
		}, []string{CertFile, "does not verify against " + CAFile, "one init"}},
		{"a key every user can read", func(dir string) { os.Chmod(filepath.Join(dir, KeyFile), 0o644) }, []string{KeyFile, "every user", "chmod 600"}},
		{"a short gossip key", func(dir string) {
			os.WriteFile(filepath.Join(dir, GossipKeyFile), []byte("c2hvcnQ=\n"), 0o600)
		}, []string{GossipKeyFile, "5-byte key, want 32"}},
		{"a folder in place of a file", func(dir string) {
			os.Remove(filepath.Join(dir, CertFile))
			os.Mkdir(filepath.Join(dir, CertFile), 0o755)
		}, []string{CertFile, "a folder, not a file", "nice-coord init"}},
		{"not PEM", func(dir string) { os.WriteFile(filepath.Join(dir, CAFile), []byte("hello"), 0o644) }, []string{CAFile, "no PEM certificate"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "creds")
			if _, err := a.Write(dir, WriteOptions{}); err != nil {
				t.Fatal(err)
			}
			c.setup(dir)
			_, err := Load(dir)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestExpiredCertificateIsRefused(t *testing.T) {
	old, err := Generate(time.Now().Add(-Validity - 48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := old.Write(dir, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = Load(dir)
	if err == nil || !strings.Contains(err.Error(), "not now") || !strings.Contains(err.Error(), "init --force") {
		t.Fatalf("Load of expired credentials: %v; want an error saying they expired and how to renew", err)
	}
}

func TestNilBundleMeansNoCredentials(t *testing.T) {
	var b *Bundle
	if b.GossipKey() != nil || b.ServerTLS() != nil || b.ClientTLS() != nil || b.Fingerprint() != "none" {
		t.Fatal("a nil bundle must mean plaintext and no gossip key")
	}
	if _, err := b.Write(t.TempDir(), WriteOptions{}); err == nil {
		t.Fatal("writing a nil bundle succeeded")
	}
}
