// Command lincheck checks that a DeviceGrid operation history is linearizable.
//
// Usage:
//
//	lincheck [--timeout 120s] [--html out.html] HISTORY.jsonl
//
// The history holds one JSON object per line:
//
//	{"client": 3, "op": "put", "key": "k17", "value": "c3-42", "call": 10, "ret": 20, "status": "ok"}
//
// op is put, get or delete; value is the value written (put), the value read (get, null when
// the key was absent) or null (delete). call and ret are monotonic nanoseconds from one clock.
// status is ok (completed), fail (did not happen: dropped) or unknown (a write that may or may
// not have happened: it stays pending forever; an unknown get is dropped).
//
// Each key is an independent register that starts absent. Exit status: 0 linearizable,
// 1 not linearizable (the failing keys are printed, and the visualization of their
// sub-histories is written to --html), 2 unreadable input or the check timed out.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// record is one line of the history file.
type record struct {
	Client *int            `json:"client"`
	Op     string          `json:"op"`
	Key    string          `json:"key"`
	Value  json.RawMessage `json:"value"`
	Call   *int64          `json:"call"`
	Ret    *int64          `json:"ret"`
	Status string          `json:"status"`
}

// register is the model state of one key.
type register struct {
	present bool
	value   string
}

// input is what an operation asked for.
type input struct {
	op    string // put, get or delete
	key   string
	value string // put: the value written
}

// output is what an operation answered: a get's read (a register), nothing for writes.
type output = register

// meta annotates an operation in the visualization.
type meta struct {
	client  int
	unknown bool
}

// stats counts what the history held.
type stats struct {
	checked        int
	unknownWrites  int
	failedDropped  int
	unknownGetsOut int
	keys           int
}

func (s stats) summary() string {
	return fmt.Sprintf("%d operations on %d keys (%d unknown writes; dropped: %d failed, "+
		"%d unknown reads)", s.checked, s.keys, s.unknownWrites, s.failedDropped, s.unknownGetsOut)
}

// parse reads a history. Unknown writes get a return time later than every other timestamp.
// Each client gets a new visualization row after an unknown operation, since it may still be
// pending while the client goes on.
func parse(r io.Reader) ([]porcupine.Operation, stats, error) {
	var st stats
	var ops []porcupine.Operation
	var pending []int // indexes of unknown writes in ops
	var maxTs int64 = math.MinInt64
	rows := map[[2]int]int{} // (client, epoch) -> row
	epoch := map[int]int{}
	keys := map[string]struct{}{}

	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var rec record
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			return nil, st, fmt.Errorf("line %d: %v", n, err)
		}
		in, out, err := convert(rec)
		if err != nil {
			return nil, st, fmt.Errorf("line %d: %v", n, err)
		}
		if rec.Status == "fail" || (rec.Status == "unknown" && rec.Op == "get") {
			if rec.Status == "fail" {
				st.failedDropped++
			} else {
				st.unknownGetsOut++
			}
			continue
		}
		client := *rec.Client
		rk := [2]int{client, epoch[client]}
		row, ok := rows[rk]
		if !ok {
			row = len(rows)
			rows[rk] = row
		}
		unknown := rec.Status == "unknown"
		if unknown {
			epoch[client]++
			st.unknownWrites++
			pending = append(pending, len(ops))
		}
		maxTs = max(maxTs, *rec.Call, *rec.Ret)
		keys[in.key] = struct{}{}
		ops = append(ops, porcupine.Operation{
			ClientId: row,
			Input:    in,
			Call:     *rec.Call,
			Output:   out,
			Return:   *rec.Ret,
			Metadata: meta{client: client, unknown: unknown},
		})
	}
	if err := sc.Err(); err != nil {
		return nil, st, fmt.Errorf("line %d: %v", n+1, err)
	}
	if maxTs == math.MaxInt64 && len(pending) > 0 {
		return nil, st, errors.New("timestamps must be below the largest 64-bit integer")
	}
	for _, i := range pending {
		ops[i].Return = maxTs + 1
	}
	st.checked = len(ops)
	st.keys = len(keys)
	return ops, st, nil
}

// convert validates one record and turns it into model input and output.
func convert(rec record) (input, output, error) {
	in := input{op: rec.Op, key: rec.Key}
	var out output
	if rec.Client == nil || rec.Call == nil || rec.Ret == nil {
		return in, out, errors.New("client, call and ret are required")
	}
	if *rec.Client < 0 {
		return in, out, errors.New("client must not be negative")
	}
	if rec.Key == "" {
		return in, out, errors.New("key is required")
	}
	switch rec.Status {
	case "ok", "fail", "unknown":
	default:
		return in, out, fmt.Errorf("status must be ok, fail or unknown, not %q", rec.Status)
	}
	if *rec.Ret < *rec.Call {
		return in, out, errors.New("ret is before call")
	}
	value, isNull, err := stringOrNull(rec.Value)
	if err != nil {
		return in, out, err
	}
	switch rec.Op {
	case "put":
		if isNull {
			return in, out, errors.New("a put needs a string value")
		}
		in.value = value
	case "get":
		out = register{present: !isNull, value: value}
	case "delete":
		if !isNull {
			return in, out, errors.New("a delete has a null value")
		}
	default:
		return in, out, fmt.Errorf("op must be put, get or delete, not %q", rec.Op)
	}
	return in, out, nil
}

// stringOrNull decodes a value that must be a JSON string or null (or missing).
func stringOrNull(raw json.RawMessage) (string, bool, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", true, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false, fmt.Errorf("value must be a string or null, not %s", raw)
	}
	return s, false, nil
}

// model is a register per key.
var model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(input).key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]string, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([][]porcupine.Operation, len(keys))
		for i, k := range keys {
			parts[i] = byKey[k]
		}
		return parts
	},
	Init: func() interface{} { return register{} },
	Step: func(state, in, out interface{}) (bool, interface{}) {
		s, i := state.(register), in.(input)
		switch i.op {
		case "put":
			return true, register{present: true, value: i.value}
		case "delete":
			return true, register{}
		default:
			return out.(output) == s, s
		}
	},
	Hash: func(state interface{}) uint64 {
		s := state.(register)
		if !s.present {
			return 0
		}
		h := fnv.New64a()
		h.Write([]byte(s.value))
		return h.Sum64() | 1
	},
	DescribeOperation: func(in, out interface{}) string {
		i := in.(input)
		switch i.op {
		case "put":
			return fmt.Sprintf("put(%s, %q)", i.key, i.value)
		case "delete":
			return fmt.Sprintf("delete(%s)", i.key)
		default:
			return fmt.Sprintf("get(%s) -> %s", i.key, describe(out.(output)))
		}
	},
	DescribeState: func(state interface{}) string { return describe(state.(register)) },
	DescribeOperationMetadata: func(m interface{}) string {
		md, ok := m.(meta)
		if !ok {
			return ""
		}
		if md.unknown {
			return fmt.Sprintf("client %d; outcome unknown", md.client)
		}
		return fmt.Sprintf("client %d", md.client)
	},
}

func describe(r register) string {
	if !r.present {
		return "absent"
	}
	return fmt.Sprintf("%q", r.value)
}

// failedKeys lists the keys whose sub-history has no complete linearization.
func failedKeys(ops []porcupine.Operation, info porcupine.LinearizationInfo) []string {
	parts := model.Partition(ops)
	partials := info.PartialLinearizations()
	var keys []string
	for i, part := range parts {
		complete := false
		if i < len(partials) {
			for _, l := range partials[i] {
				complete = complete || len(l) == len(part)
			}
		}
		if !complete {
			keys = append(keys, part[0].Input.(input).key)
		}
	}
	return keys
}

// only keeps the operations on the given keys.
func only(ops []porcupine.Operation, keys []string) []porcupine.Operation {
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	var kept []porcupine.Operation
	for _, op := range ops {
		if want[op.Input.(input).key] {
			kept = append(kept, op)
		}
	}
	return kept
}

// run is the command; it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lincheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 120*time.Second, "give up (exit 2) after this long")
	html := fs.String("html", "", "on a violation, write the visualization of the failing keys here")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: lincheck [--timeout 120s] [--html out.html] HISTORY.jsonl")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	path := fs.Arg(0)
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintf(stderr, "lincheck: %v\n", err)
		return 2
	}
	ops, st, err := parse(f)
	f.Close()
	if err != nil {
		fmt.Fprintf(stderr, "lincheck: %s: %v\n", path, err)
		return 2
	}

	start := time.Now()
	result, info := porcupine.CheckOperationsVerbose(model, ops, *timeout)
	took := time.Since(start).Round(time.Millisecond)
	switch result {
	case porcupine.Ok:
		fmt.Fprintf(stdout, "lincheck: %s: linearizable (%v)\n", st.summary(), took)
		return 0
	case porcupine.Illegal:
		keys := failedKeys(ops, info)
		fmt.Fprintf(stdout, "lincheck: %s: NOT linearizable (%v)\n", st.summary(), took)
		fmt.Fprintf(stdout, "lincheck: keys whose sub-history is not linearizable: %s\n",
			strings.Join(keys, ", "))
		if *html != "" {
			_, vinfo := porcupine.CheckOperationsVerbose(model, only(ops, keys), *timeout)
			if err := porcupine.VisualizePath(model, vinfo, *html); err != nil {
				fmt.Fprintf(stderr, "lincheck: writing %s: %v\n", *html, err)
			} else {
				fmt.Fprintf(stdout, "lincheck: visualization: %s\n", *html)
			}
		}
		return 1
	default:
		fmt.Fprintf(stdout, "lincheck: %s: UNKNOWN, the check timed out after %v\n",
			st.summary(), *timeout)
		return 2
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
