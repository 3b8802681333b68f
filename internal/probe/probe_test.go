package probe

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			io.WriteString(w, "ready: training in generation 3\n")
		case "/notready":
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "not ready: idle at step 0\nsecond line\n")
		case "/empty":
			w.WriteHeader(http.StatusInternalServerError)
		case "/moved":
			http.Redirect(w, r, "/readyz", http.StatusFound)
		}
	}))
	defer srv.Close()
	// A port nothing listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/readyz"
	l.Close()

	for _, tc := range []struct {
		url, line, err string
	}{
		{srv.URL + "/readyz", "ready: training in generation 3", ""},
		{srv.URL + "/notready", "not ready: idle at step 0", "answers 503: not ready: idle at step 0"},
		{srv.URL + "/empty", "500 Internal Server Error", "answers 500"},
		{srv.URL + "/moved", "", "answers 302"},
		{closed, "", "nothing answers at " + closed},
		{"127.0.0.1:7080/readyz", "", "want an http:// or https:// URL"},
		{"ftp://host/x", "", "want an http:// or https:// URL"},
	} {
		line, err := Check(context.Background(), tc.url, 5*time.Second)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.url, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one containing %q", tc.url, err, tc.err)
		case tc.line != "" && line != tc.line:
			t.Errorf("%s: line %q, want %q", tc.url, line, tc.line)
		}
	}
}

func TestCommand(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	defer srv.Close()
	var out bytes.Buffer
	if err := Command(context.Background(), "nice-worker", srv.URL+"/healthz", nil, &out); err != nil || out.String() != "ok\n" {
		t.Errorf("default URL: %v, printed %q", err, out.String())
	}
	out.Reset()
	if err := Command(context.Background(), "nice-worker", "http://127.0.0.1:1/x", []string{"--url", srv.URL, "--quiet"}, &out); err != nil || out.Len() != 0 {
		t.Errorf("--url --quiet: %v, printed %q", err, out.String())
	}
	if err := Command(context.Background(), "nice-coord", srv.URL, []string{"--timeout", "0s"}, io.Discard); err == nil || !strings.Contains(err.Error(), "--timeout") {
		t.Errorf("--timeout 0: %v", err)
	}
	if err := Command(context.Background(), "nice-coord", srv.URL, []string{"extra"}, io.Discard); err == nil || !strings.Contains(err.Error(), "unexpected argument") {
		t.Errorf("extra argument: %v", err)
	}
}
