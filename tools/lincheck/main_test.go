package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// check writes the lines as a history file and runs the command on it.
func check(t *testing.T, lines []string, extra ...string) (int, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "history.jsonl")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run(append(extra, path), &stdout, &stderr)
	return code, stdout.String() + stderr.String()
}

func TestLinearizable(t *testing.T) {
	code, out := check(t, []string{
		`{"client": 0, "op": "get", "key": "a", "value": null, "call": 0, "ret": 5, "status": "ok"}`,
		`{"client": 0, "op": "put", "key": "a", "value": "c0-1", "call": 10, "ret": 20, "status": "ok"}`,
		// Concurrent with the put: may see either state.
		`{"client": 1, "op": "get", "key": "a", "value": null, "call": 12, "ret": 18, "status": "ok"}`,
		`{"client": 2, "op": "get", "key": "a", "value": "c0-1", "call": 15, "ret": 25, "status": "ok"}`,
		`{"client": 1, "op": "put", "key": "b", "value": "c1-1", "call": 30, "ret": 40, "status": "ok"}`,
		`{"client": 2, "op": "get", "key": "b", "value": "c1-1", "call": 41, "ret": 42, "status": "ok"}`,
		`{"client": 0, "op": "delete", "key": "a", "value": null, "call": 50, "ret": 60, "status": "ok"}`,
		`{"client": 0, "op": "get", "key": "a", "value": null, "call": 61, "ret": 62, "status": "ok"}`,
		// A failed put did not happen; an unknown get says nothing.
		`{"client": 1, "op": "put", "key": "a", "value": "c1-2", "call": 63, "ret": 64, "status": "fail"}`,
		`{"client": 2, "op": "get", "key": "a", "value": "zzz", "call": 63, "ret": 64, "status": "unknown"}`,
		`{"client": 0, "op": "get", "key": "a", "value": null, "call": 65, "ret": 66, "status": "ok"}`,
	})
	if code != 0 || !strings.Contains(out, "linearizable") || !strings.Contains(out, "2 keys") {
		t.Fatalf("want linearizable (0), got %d:\n%s", code, out)
	}
}

func TestStaleReadIsNotLinearizable(t *testing.T) {
	html := filepath.Join(t.TempDir(), "out.html")
	code, out := check(t, []string{
		`{"client": 0, "op": "put", "key": "a", "value": "c0-1", "call": 0, "ret": 10, "status": "ok"}`,
		`{"client": 0, "op": "put", "key": "a", "value": "c0-2", "call": 20, "ret": 30, "status": "ok"}`,
		`{"client": 1, "op": "get", "key": "a", "value": "c0-1", "call": 40, "ret": 50, "status": "ok"}`,
		`{"client": 1, "op": "put", "key": "b", "value": "c1-1", "call": 0, "ret": 10, "status": "ok"}`,
	}, "--html", html)
	if code != 1 || !strings.Contains(out, "NOT linearizable") {
		t.Fatalf("want a violation (1), got %d:\n%s", code, out)
	}
	if !strings.Contains(out, "not linearizable: a\n") {
		t.Fatalf("want only key a reported:\n%s", out)
	}
	if st, err := os.Stat(html); err != nil || st.Size() == 0 {
		t.Fatalf("no visualization written: %v", err)
	}
}

func TestReadOfUnwrittenValueIsNotLinearizable(t *testing.T) {
	code, out := check(t, []string{
		`{"client": 0, "op": "get", "key": "a", "value": "c9-9", "call": 0, "ret": 10, "status": "ok"}`,
		`{"client": 1, "op": "put", "key": "a", "value": "c9-9", "call": 11, "ret": 20, "status": "ok"}`,
	})
	if code != 1 {
		t.Fatalf("want a violation (1), got %d:\n%s", code, out)
	}
}

func TestReadOfFailedWriteIsNotLinearizable(t *testing.T) {
	code, out := check(t, []string{
		`{"client": 0, "op": "put", "key": "a", "value": "c0-1", "call": 0, "ret": 10, "status": "fail"}`,
		`{"client": 1, "op": "get", "key": "a", "value": "c0-1", "call": 20, "ret": 30, "status": "ok"}`,
	})
	if code != 1 {
		t.Fatalf("want a violation (1), got %d:\n%s", code, out)
	}
}

func TestUnknownWriteMayLandLate(t *testing.T) {
	code, out := check(t, []string{
		`{"client": 0, "op": "put", "key": "a", "value": "c0-1", "call": 0, "ret": 10, "status": "unknown"}`,
		`{"client": 0, "op": "put", "key": "a", "value": "c0-2", "call": 20, "ret": 30, "status": "ok"}`,
		`{"client": 1, "op": "get", "key": "a", "value": "c0-2", "call": 40, "ret": 50, "status": "ok"}`,
		`{"client": 1, "op": "get", "key": "a", "value": "c0-1", "call": 1000, "ret": 1010, "status": "ok"}`,
	})
	if code != 0 {
		t.Fatalf("want linearizable (0), got %d:\n%s", code, out)
	}
	// But it cannot have landed before it was sent.
	code, out = check(t, []string{
		`{"client": 1, "op": "get", "key": "a", "value": "c0-1", "call": 0, "ret": 5, "status": "ok"}`,
		`{"client": 0, "op": "put", "key": "a", "value": "c0-1", "call": 10, "ret": 20, "status": "unknown"}`,
	})
	if code != 1 {
		t.Fatalf("want a violation (1), got %d:\n%s", code, out)
	}
}

func TestUnreadableInput(t *testing.T) {
	for _, line := range []string{
		`not json`,
		`{"client": 0, "op": "cas", "key": "a", "value": null, "call": 0, "ret": 1, "status": "ok"}`,
		`{"client": 0, "op": "put", "key": "a", "value": null, "call": 0, "ret": 1, "status": "ok"}`,
		`{"client": 0, "op": "get", "key": "a", "value": 3, "call": 0, "ret": 1, "status": "ok"}`,
		`{"client": 0, "op": "get", "key": "a", "value": null, "call": 5, "ret": 1, "status": "ok"}`,
		`{"client": 0, "op": "get", "key": "a", "value": null, "ret": 1, "status": "ok"}`,
		`{"client": 0, "op": "get", "key": "a", "value": null, "call": 0, "ret": 1, "status": "maybe"}`,
	} {
		if code, out := check(t, []string{line}); code != 2 {
			t.Errorf("%s: want 2, got %d:\n%s", line, code, out)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{filepath.Join(t.TempDir(), "missing.jsonl")}, &stdout, &stderr); code != 2 {
		t.Errorf("missing file: want 2, got %d", code)
	}
}

func TestEmptyHistory(t *testing.T) {
	if code, out := check(t, nil); code != 0 {
		t.Fatalf("want 0, got %d:\n%s", code, out)
	}
}
