package creds

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// The files of a credentials folder.
const (
	CAFile        = "ca.crt"     // the cluster CA's certificate
	CertFile      = "node.crt"   // the node certificate, signed by the CA
	KeyFile       = "node.key"   // the node certificate's private key
	GossipKeyFile = "gossip.key" // the gossip key, base64
)

// Files lists the folder's files in the order Write writes them.
var Files = []string{CAFile, CertFile, KeyFile, GossipKeyFile}

// ErrExists is returned by Write when a file it would write exists already.
var ErrExists = errors.New("credentials exist already")

// WriteOptions tune Write.
type WriteOptions struct {
	// Force replaces existing files. Without it Write refuses to touch a
	// folder that holds any of them: replacing a cluster's credentials cuts
	// off every process that still holds the old ones.
	Force bool
	// GroupReadable writes the private keys with mode 0640 instead of 0600,
	// for containers that run under another user but share the owner's group
	// (file-based compose secrets keep the host's owner and mode).
	GroupReadable bool
}

// Write puts the bundle's four files into dir (created 0700, or 0750 with
// GroupReadable), certificates 0644 and keys 0600 (0640), each written to a
// temporary file and renamed into place. It returns the paths written.
func (b *Bundle) Write(dir string, o WriteOptions) ([]string, error) {
	if b == nil {
		return nil, errors.New("writing credentials: there are none")
	}
	keyMode, dirMode := os.FileMode(0o600), os.FileMode(0o700)
	if o.GroupReadable {
		keyMode, dirMode = 0o640, 0o750
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("creating the credentials folder %s: %w", dir, err)
	}
	if !o.Force {
		for _, name := range Files {
			p := filepath.Join(dir, name)
			if _, err := os.Lstat(p); err == nil {
				return nil, fmt.Errorf("%w: %s; every process of the cluster must use the same folder, so it is kept "+
					"(use it as it is, or pass --force to replace it and restart every process with the new one)", ErrExists, p)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("checking %s: %w", p, err)
			}
		}
	}
	contents := map[string][]byte{CAFile: b.caPEM, CertFile: b.certPEM, KeyFile: b.keyPEM, GossipKeyFile: b.gossipText()}
	modes := map[string]os.FileMode{CAFile: 0o644, CertFile: 0o644, KeyFile: keyMode, GossipKeyFile: keyMode}
	var written []string
	for _, name := range Files {
		p := filepath.Join(dir, name)
		if err := writeFile(p, contents[name], modes[name]); err != nil {
			return written, err
		}
		written = append(written, p)
	}
	return written, nil
}

// writeFile writes data with mode perm through a temporary file in the same
// folder, so a reader never sees half a key and a crash leaves the old file.
func writeFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	// Chmod before any byte of a key is written: CreateTemp makes 0600.
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func (b *Bundle) gossipText() []byte { return b.gossipRaw }

// Load reads and checks the credentials in dir (see the package
// documentation for what is checked).
func Load(dir string) (*Bundle, error) {
	read := func(name string, secret bool) ([]byte, error) {
		p := filepath.Join(dir, name)
		if secret {
			if st, err := os.Stat(p); err == nil && st.Mode().Perm()&0o007 != 0 {
				return nil, fileError(dir, name, fmt.Sprintf("is readable or writable by every user (mode %04o): "+
					"restrict it with `chmod 600 %s` (or 640 for a group that needs it)", st.Mode().Perm(), p))
			}
		}
		b, err := os.ReadFile(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("reading %s: the file does not exist; create the cluster's credentials with "+
				"`nice-coord init --dir %s` (or point --tls-dir at the folder init wrote)", p, dir)
		case errors.Is(err, syscall.EISDIR):
			return nil, fmt.Errorf("reading %s: it is a folder, not a file: the credentials were not there when it was "+
				"mounted (compose makes empty folders in place of missing secret files): remove those folders, "+
				"create the credentials with `nice-coord init` and start again", p)
		case errors.Is(err, fs.ErrPermission):
			groups, _ := os.Getgroups()
			return nil, fmt.Errorf("reading %s: permission denied to this process (uid %d, gid %d, groups %v): make the "+
				"file readable by one of them; with compose, write the credentials with `nice-coord init --group-readable` "+
				"and start it with NICE_SECRETS_GID=$(id -g) (the secrets keep the host's owner and mode)",
				p, os.Getuid(), os.Getgid(), groups)
		case err != nil:
			return nil, fmt.Errorf("reading %s: %w", p, err)
		}
		return b, nil
	}
	data := make(map[string][]byte, len(Files))
	for _, name := range Files {
		b, err := read(name, name == KeyFile || name == GossipKeyFile)
		if err != nil {
			return nil, err
		}
		data[name] = b
	}
	return parse(data[CAFile], data[CertFile], data[KeyFile], data[GossipKeyFile], dir, time.Now())
}

// fileError names a file of the folder and what is wrong with it.
func fileError(dir, name, problem string) error {
	where := name
	if dir != "" {
		where = filepath.Join(dir, name)
	}
	return fmt.Errorf("credentials: %s %s", where, problem)
}
