package ring

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Processes of one ring on one host can also reach each other over Unix
// sockets in a folder they share (the local folder): each serves its gRPC
// server there too, on a socket named after the address it advertises, and
// a transport with the same folder dials that socket before the address
// over TCP. The same gRPC streams and checks run over it; with the
// cluster's credentials, the TLS handshake authenticates both ends and the
// stream then stays in the clear (internal/creds). A Unix socket costs the kernel about half of what
// loopback TCP does per byte (no protocol, no acknowledgements), and
// containers that share the folder as a volume skip the bridge between them.
// A peer whose socket is absent or dead is reached over TCP as before, so
// hosts, folders and processes can be mixed freely.

// localSocketBuffer is the send and receive buffer of a local link's socket
// (the kernel caps it at net.core.wmem_max and rmem_max). Unix sockets start
// at about 200 KiB and do not grow as TCP's do; with gRPC writing 1 MiB at a
// time that made a writer block about twice as often as over TCP.
const localSocketBuffer = 4 << 20

// maxSocketPath is the longest path a Unix socket address holds on Linux
// (108 bytes with the terminating zero).
const maxSocketPath = 107

// LocalSocketPath is the socket in dir of the process that advertises addr:
// the address with letters, digits, dots and dashes kept and every other
// byte written as _ and its hex code ("127.0.0.1:7100" becomes
// "127.0.0.1_3a7100.sock"), so two addresses never share a socket; or a
// hash of the address when that path would be too long for a Unix socket.
func LocalSocketPath(dir, addr string) string {
	var name strings.Builder
	for i := 0; i < len(addr); i++ {
		switch c := addr[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '-':
			name.WriteByte(c)
		default:
			fmt.Fprintf(&name, "_%02x", c)
		}
	}
	name.WriteString(".sock")
	if p := filepath.Join(dir, name.String()); len(p) <= maxSocketPath {
		return p
	}
	sum := sha256.Sum256([]byte(addr))
	return filepath.Join(dir, "h"+hex.EncodeToString(sum[:10])+".sock")
}

// PrepareLocalDir creates dir (mode 0700) when it is missing and checks that
// only its owner, this process's user, can create sockets in it: a socket
// another user could plant there would take a peer's place. It returns an
// error naming what is wrong otherwise.
func PrepareLocalDir(dir string) error {
	if dir == "" {
		return errors.New("local folder: empty path")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("local folder %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("local folder %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("local folder %s: not a folder", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("local folder %s: writable by other users (mode %04o); make it 0700 or 0755 (chmod go-w), or choose another folder", dir, perm)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("local folder %s: owned by uid %d, not by this process's uid %d; chown it or choose another folder", dir, st.Uid, os.Geteuid())
	}
	return nil
}

// ListenLocal prepares dir (PrepareLocalDir) and listens on the socket of
// addr in it (LocalSocketPath). A socket left there by a process that died
// is replaced; one that a live process still serves is an error. Closing
// the listener removes the socket.
func ListenLocal(dir, addr string) (net.Listener, error) {
	path := LocalSocketPath(dir, addr)
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("local folder %s: its path is too long for a Unix socket (%d bytes, at most %d with the socket's name); choose a shorter one", dir, len(path), maxSocketPath)
	}
	if err := PrepareLocalDir(dir); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("local socket %s for %s: a file that is not a socket is in its place; remove it", path, addr)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("local socket %s for %s: another process serves it; give each process its own --advertise address", path, addr)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("local socket %s: removing the one a stopped process left: %w", path, err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("local socket for %s: %w", addr, err)
	}
	return localListener{lis}, nil
}

// localListener sizes the socket buffers of the connections it accepts.
type localListener struct{ net.Listener }

func (l localListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		sizeLocal(c)
	}
	return c, err
}

func sizeLocal(c net.Conn) {
	if uc, ok := c.(*net.UnixConn); ok {
		// Best effort: a smaller buffer only costs speed.
		_ = uc.SetWriteBuffer(localSocketBuffer)
		_ = uc.SetReadBuffer(localSocketBuffer)
	}
}

// localFirst returns a gRPC dialer of the peer at addr that tries its Unix
// socket at path and then the resolved target over TCP; routes counts the
// connections each way took, and log (if not nil) hears of each.
func localFirst(addr, path string, routes *routeCounts, log *slog.Logger) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, target string) (net.Conn, error) {
		var d net.Dialer
		c, uerr := d.DialContext(ctx, "unix", path)
		if uerr == nil {
			sizeLocal(c)
			routes.local.Add(1)
			if log != nil {
				log.Info("ring connection", "peer", addr, "route", "local", "socket", path)
			}
			return c, nil
		}
		c, err := d.DialContext(ctx, "tcp", target)
		if err == nil {
			routes.tcp.Add(1)
			if log != nil {
				log.Info("ring connection", "peer", addr, "route", "tcp", "why_not_local", uerr)
			}
		}
		return c, err
	}
}
