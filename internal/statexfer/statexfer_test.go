package statexfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	nicepb "github.com/nice-flow/nice/proto"
	"github.com/nice-flow/nice/train"
)

// fakeSource serves blob at step 7, announcing size (or len(blob)).
type fakeSource struct {
	blob []byte
	size int64
}

func (f *fakeSource) WriteState(ctx context.Context, pos *nicepb.Position, snapshot bool, size func(int64), w io.Writer) error {
	if pos.GetStep() != 7 {
		return fmt.Errorf("%w: only step 7 here", ErrUnavailable)
	}
	n := f.size
	if n == 0 {
		n = int64(len(f.blob))
	}
	size(n)
	_, err := w.Write(f.blob)
	return err
}

func serve(t *testing.T, src Source) *grpc.ClientConn {
	t.Helper()
	return serveWith(t, &Server{Src: src})
}

// serveWith serves srv on loopback until the test ends.
func serveWith(t *testing.T, srv *Server) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	nicepb.RegisterStateServiceServer(s, srv)
	go s.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); s.Stop(); srv.Wait() })
	return conn
}

func TestFetch(t *testing.T) {
	defer goleak.VerifyNone(t)
	blob := make([]byte, 3*ChunkBytes+12345) // several chunks and a partial one
	for i := range blob {
		blob[i] = byte(i * 7)
	}
	blobRange := Expect{Min: 1, Max: int64(len(blob)) + 10}
	cases := []struct {
		name    string
		src     *fakeSource
		step    int64
		wantErr error
		ok      bool
	}{
		{"whole state", &fakeSource{blob: blob}, 7, nil, true},
		{"nothing sent", &fakeSource{blob: nil}, 7, nil, false},
		{"not held here", &fakeSource{blob: blob}, 8, ErrUnavailable, false},
		{"announced longer than sent", &fakeSource{blob: blob, size: int64(len(blob) + 1)}, 7, nil, false},
		{"announced shorter than sent", &fakeSource{blob: blob, size: int64(len(blob) - 1)}, 7, nil, false},
		{"announced longer than a state of the run", &fakeSource{blob: blob, size: blobRange.Max + 1}, 7, nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn := serve(t, tc.src)
			got, err := Fetch(context.Background(), conn, Request{Source: "test", Position: &nicepb.Position{Step: tc.step}, Size: blobRange})
			if tc.ok {
				if err != nil || !bytes.Equal(got, tc.src.blob) {
					t.Fatalf("got %d bytes, err %v; want the %d bytes sent", len(got), err, len(tc.src.blob))
				}
				return
			}
			if err == nil {
				t.Fatal("a bad transfer was accepted")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			t.Logf("refused: %v", err)
		})
	}
}

func TestPositionRoundTrip(t *testing.T) {
	p := train.Position{Step: 1234, Epoch: 5, StepInEpoch: 67}
	if got := FromPB(ToPB(p)); got != p {
		t.Fatalf("%+v became %+v", p, got)
	}
	if got := FromPB(nil); got != (train.Position{}) {
		t.Fatalf("nil became %+v", got)
	}
}

// stallingSource sends one chunk's worth, then stops sending until its
// request ends (a source that froze).
type stallingSource struct{}

func (stallingSource) WriteState(ctx context.Context, pos *nicepb.Position, snapshot bool, size func(int64), w io.Writer) error {
	size(3 * ChunkBytes)
	if _, err := w.Write(make([]byte, ChunkBytes)); err != nil {
		return err
	}
	<-ctx.Done()
	return ctx.Err()
}

// A transfer that stops making progress fails after ChunkWait, naming why,
// instead of holding its caller until the caller's own deadline.
func TestFetchStalledSource(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // after the server stops
	first, each := FirstChunkWait, ChunkWait
	FirstChunkWait, ChunkWait = 5*time.Second, 300*time.Millisecond
	t.Cleanup(func() { FirstChunkWait, ChunkWait = first, each })
	conn := serve(t, stallingSource{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t0 := time.Now()
	_, err := Fetch(ctx, conn, Request{Source: "test", Position: &nicepb.Position{Step: 7}, Size: Expect{Max: 3 * ChunkBytes}})
	if err == nil || !strings.Contains(err.Error(), "no state from the source") {
		t.Fatalf("a stalled transfer gave %v", err)
	}
	if d := time.Since(t0); d > 30*time.Second {
		t.Fatalf("a stalled transfer took %v to fail", d)
	}
}
