package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nice-flow/nice/internal/creds"
)

func init() {
	register("init", command{summary: "write a cluster's credentials: a CA, the node certificate and the gossip key", run: runInit})
}

func runInit(_ context.Context, args []string) error {
	fs := newFlagSet("init", "--dir DIR [--force] [--group-readable]",
		"Writes a new cluster's credentials into --dir: ca.crt (the cluster CA; its key is not kept), node.crt\n"+
			"and node.key (the certificate every process of the cluster presents, for gRPC with mutual TLS),\n"+
			"and gossip.key (the key gossip is encrypted with). Give the same folder to every process\n"+
			"(--tls-dir, or NICE_TLS_DIR); whoever holds it is a member of the cluster. It refuses to\n"+
			"replace existing credentials unless --force is given.")
	dir := fs.String("dir", "", "folder to write the credentials into (created if missing)")
	force := fs.Bool("force", false, "replace the credentials in --dir (every process must then be restarted with the new ones)")
	group := fs.Bool("group-readable", false, "make the private keys readable by the owner's group (mode 0640), for "+
		"containers that run as another user with that group (compose: NICE_SECRETS_GID)")
	if _, err := parseFlags(fs, args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if *dir == "" {
		fs.Usage()
		return errors.New("--dir is required: the folder to write the credentials into (e.g. --dir nice-secrets)")
	}
	b, err := creds.Generate(time.Now())
	if err != nil {
		return err
	}
	written, err := b.Write(*dir, creds.WriteOptions{Force: *force, GroupReadable: *group})
	if err != nil {
		return err
	}
	for _, p := range written {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		fmt.Printf("wrote %s (mode %04o)\n", p, st.Mode().Perm())
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		abs = *dir
	}
	fmt.Printf("cluster CA %s; certificates valid until %s\n\n", b.Fingerprint(), b.NotAfter().Format(time.DateOnly))
	fmt.Printf("Next, give every process the folder, e.g.:\n"+
		"  nice-coord up --workers 2 --tls-dir %[1]s\n"+
		"  nice-coord serve --tls-dir %[1]s     and on each worker host: nice-worker --tls-dir %[1]s --coordinator HOST:7000 --join HOST:7946\n"+
		"  NICE_SECRETS=%[1]s docker-compose up --scale worker=4   (see the README for NICE_SECRETS_GID)\n"+
		"  nice-coord status --tls-dir %[1]s --addr HOST:7000\n", abs)
	return nil
}
