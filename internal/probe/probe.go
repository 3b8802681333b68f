// Package probe asks an HTTP health endpoint (GET /healthz or /readyz of a
// coordinator or worker) and says whether it answered 200. It is what the
// images' health checks run: the images are FROM scratch, with no shell and
// no curl, so nice-coord and nice-worker each carry it as a subcommand.
package probe

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/nice-flow/nice/internal/envflag"
	"github.com/nice-flow/nice/internal/logging"
)

// maxBody bounds what is read of an answer: the health pages are one line.
const maxBody = 4 << 10

// Check asks GET u within timeout. It returns the first line of the
// answer's body; the error says why the answer was not a 200, or why none
// came.
func Check(ctx context.Context, u string, timeout time.Duration) (string, error) {
	pu, err := url.Parse(u)
	if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
		return "", fmt.Errorf("--url %q: want an http:// or https:// URL with a host, such as http://127.0.0.1:7080/readyz", u)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", fmt.Errorf("--url %q: %w", u, err)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return "", fmt.Errorf("%s did not answer within %v", u, timeout)
		}
		return "", fmt.Errorf("nothing answers at %s: %w", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if resp.StatusCode != http.StatusOK {
		if line == "" {
			line = resp.Status
		}
		return line, fmt.Errorf("%s answers %d: %s", u, resp.StatusCode, line)
	}
	return line, nil
}

// Command runs the probe subcommand of cmd (nice-coord or nice-worker):
// flags --url (default defaultURL), --timeout and --quiet, each also from
// the environment (NICE_URL, ...). It prints the answer's first line
// unless quiet, and fails unless the answer was a 200.
func Command(ctx context.Context, cmd, defaultURL string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(cmd+" probe", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s probe [--url URL] [--timeout D] [--quiet]\n\n"+
			"Asks an HTTP health endpoint and exits 0 only if it answers 200: /healthz (alive) or /readyz\n"+
			"(ready; see the README). For health checks of images without a shell or curl.\n\nFlags:\n", cmd)
		fs.PrintDefaults()
	}
	u := fs.String("url", defaultURL, "the endpoint to ask")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	quiet := fs.Bool("quiet", false, "print nothing; only the exit status tells")
	logging.Flag(fs) // accepted for uniformity: the probe logs nothing
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see %s probe -h)", fs.Arg(0), cmd)
	}
	if _, err := envflag.Apply(fs); err != nil {
		return err
	}
	if *timeout <= 0 {
		return fmt.Errorf("--timeout %v: must be positive", *timeout)
	}
	line, err := Check(ctx, *u, *timeout)
	if err != nil {
		return err
	}
	if !*quiet {
		fmt.Fprintln(stdout, line)
	}
	return nil
}
