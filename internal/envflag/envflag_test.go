package envflag

import (
	"flag"
	"testing"
)

func TestApply(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	a := fs.Int("save-every", 1, "")
	b := fs.Int("batch", 2, "")
	c := fs.Int("epochs", 3, "")
	t.Setenv("NICE_SAVE_EVERY", "10")
	t.Setenv("NICE_BATCH", "20")
	if err := fs.Parse([]string{"--batch", "5"}); err != nil {
		t.Fatal(err)
	}
	given, err := Apply(fs)
	if err != nil {
		t.Fatal(err)
	}
	if *a != 10 || *b != 5 || *c != 3 {
		t.Fatalf("save-every %d (env), batch %d (flag wins), epochs %d (default)", *a, *b, *c)
	}
	if !given["save-every"] || !given["batch"] || given["epochs"] {
		t.Fatalf("given %v", given)
	}
	t.Setenv("NICE_EPOCHS", "many")
	if _, err := Apply(fs); err == nil {
		t.Fatal("NICE_EPOCHS=many accepted")
	}
}
