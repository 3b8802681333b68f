package logging

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

// The json format writes one JSON object per line, with the level, the
// message and every attribute as fields; debug records appear only when
// asked for.
func TestJSONIsOneObjectPerLine(t *testing.T) {
	var buf bytes.Buffer
	log := New(&buf, JSON, Level(false))
	log.Info("generation 3 (workers joined): 2 workers [a b], from step 40", "worker", "a")
	log.Debug("checkpoint saved", "step", 40)
	log.Warn("line with\nnewline and \"quotes\"", "err", errors.New("boom\nbang"))
	log.With("worker", "b").Error("all-reduce failed", "step", int64(41), "seconds", 0.25)

	sc := bufio.NewScanner(&buf)
	var lines []map[string]any
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d is not a JSON object: %v\n%s", len(lines)+1, err, sc.Text())
		}
		lines = append(lines, m)
	}
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3 (the debug record hidden):\n%s", len(lines), buf.String())
	}
	want := []struct{ level, msg, key string }{
		{"INFO", "generation 3 (workers joined): 2 workers [a b], from step 40", "worker"},
		{"WARN", "line with\nnewline and \"quotes\"", "err"},
		{"ERROR", "all-reduce failed", "seconds"},
	}
	for i, w := range want {
		m := lines[i]
		if m["level"] != w.level || m["msg"] != w.msg || m[w.key] == nil || m["time"] == nil {
			t.Errorf("line %d: %v; want level %s, msg %q, a %q field and a time", i+1, m, w.level, w.msg, w.key)
		}
	}
	if lines[2]["worker"] != "b" || lines[2]["step"] != float64(41) {
		t.Errorf("attributes of the logger and the record: %v", lines[2])
	}

	buf.Reset()
	New(&buf, JSON, Level(true)).Debug("checkpoint saved", "step", 40)
	if !strings.Contains(buf.String(), `"level":"DEBUG"`) {
		t.Errorf("verbose logger hides debug: %q", buf.String())
	}
}

func TestTextIsTheDefault(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f := Flag(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	New(&buf, *f, Level(false)).Info("coordinator ready", "step", 3)
	if got := buf.String(); !strings.Contains(got, "level=INFO msg=\"coordinator ready\" step=3") {
		t.Errorf("text format: %q", got)
	}
}

func TestFlagRefusesUnknownFormats(t *testing.T) {
	for _, tc := range []struct {
		arg  string
		want Format
		ok   bool
	}{{"json", JSON, true}, {"text", Text, true}, {"JSON", "", false}, {"logfmt", "", false}, {"", "", false}} {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f := Flag(fs)
		err := fs.Parse([]string{"--log-format", tc.arg})
		switch {
		case tc.ok && (err != nil || *f != tc.want):
			t.Errorf("--log-format %q: %v, %q", tc.arg, err, *f)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), "want text or json")):
			t.Errorf("--log-format %q: error %v, want one naming the choices", tc.arg, err)
		}
	}
}
