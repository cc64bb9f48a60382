// Package argocdhealth runs manifests/argocd/health.lua the way Argo CD does, on AppRelease
// objects captured from real runs, and checks the health it returns.
//
// Run by `go test ./...` in tests/go (tests/unit/test_go_harnesses.py runs it in `make test`).
// The cases are tests/testdata/argocd/*.json, written by hack/capture-argocd-statuses from a
// real control plane, operator and agents; expected.json there holds the health and message
// Argo CD must show for each. Covers: every captured stage gives its expected
// {status, message}; every capture has an expected entry and the other way round; the
// captures between them exercise every status the check can return.
//
// What "the way Argo CD does" means (argo-cd util/lua, v3.2): a fresh gopher-lua state per
// object with the standard libraries skipped and only package, base and table opened (a
// custom check runs without `string` or `math` unless the user opts in), the object as the
// global `obj` (JSON objects as tables keyed by string, arrays as sequences, numbers as Lua
// numbers, null as nil), a one-second deadline, and the returned table's `status` checked
// against Argo CD's health codes.
package argocdhealth

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
)

var (
	repo      = filepath.Join("..", "..", "..")
	script    = filepath.Join(repo, "manifests", "argocd", "health.lua")
	testdata  = filepath.Join(repo, "tests", "testdata", "argocd")
	healthSet = map[string]bool{
		"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
	}
)

type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

type testCase struct {
	File   string `json:"file"`
	Stage  string `json:"stage"`
	Health health `json:"health"`
}

// toLua converts a decoded JSON value into the Lua value Argo CD would hand the script.
func toLua(state *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case []any:
		table := state.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	case map[string]any:
		table := state.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	}
	panic("unexpected JSON value")
}

// evaluate runs the health script on one object and returns what Argo CD would read from it.
func evaluate(t *testing.T, source string, object map[string]any) health {
	t.Helper()
	state := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer state.Close()
	for name, open := range map[string]lua.LGFunction{
		lua.LoadLibName: lua.OpenPackage, lua.BaseLibName: lua.OpenBase, lua.TabLibName: lua.OpenTable,
	} {
		if err := state.CallByParam(lua.P{Fn: state.NewFunction(open), NRet: 0, Protect: true}, lua.LString(name)); err != nil {
			t.Fatalf("opening %s: %v", name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	state.SetContext(ctx)
	state.SetGlobal("obj", toLua(state, object))
	if err := state.DoString(source); err != nil {
		t.Fatalf("health.lua failed: %v", err)
	}
	returned, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("health.lua returned %s, not a table", state.Get(-1).Type())
	}
	status, _ := returned.RawGetString("status").(lua.LString)
	message, _ := returned.RawGetString("message").(lua.LString)
	return health{Status: string(status), Message: string(message)}
}

func readJSON(t *testing.T, path string, into any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func loadCases(t *testing.T) []testCase {
	t.Helper()
	var table struct {
		Cases []testCase `json:"cases"`
	}
	readJSON(t, filepath.Join(testdata, "expected.json"), &table)
	if len(table.Cases) == 0 {
		t.Fatal("expected.json lists no cases: run hack/capture-argocd-statuses")
	}
	return table.Cases
}

func TestCapturedStatuses(t *testing.T) {
	source, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range loadCases(t) {
		t.Run(c.File, func(t *testing.T) {
			var object map[string]any
			readJSON(t, filepath.Join(testdata, c.File), &object)
			if object["kind"] != "AppRelease" {
				t.Fatalf("%s holds a %v, not an AppRelease", c.File, object["kind"])
			}
			got := evaluate(t, string(source), object)
			if !healthSet[got.Status] {
				t.Fatalf("status %q is not an Argo CD health status (Argo CD would show Unknown)", got.Status)
			}
			if got != c.Health {
				t.Errorf("%s (%s):\n got  %+v\n want %+v", c.File, c.Stage, got, c.Health)
			}
		})
	}
}

func TestEveryCaptureHasAnExpectation(t *testing.T) {
	listed := map[string]bool{}
	for _, c := range loadCases(t) {
		listed[c.File] = true
	}
	files, err := filepath.Glob(filepath.Join(testdata, "[0-9][0-9]-*.json"))
	if err != nil {
		t.Fatal(err)
	}
	onDisk := map[string]bool{}
	for _, f := range files {
		onDisk[filepath.Base(f)] = true
		if !listed[filepath.Base(f)] {
			t.Errorf("%s is not in expected.json", filepath.Base(f))
		}
	}
	for f := range listed {
		if !onDisk[f] {
			t.Errorf("expected.json lists %s, which is missing", f)
		}
	}
}

func TestCapturesCoverEveryStatusTheCheckReturns(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range loadCases(t) {
		seen[c.Health.Status] = true
	}
	var missing []string
	for _, status := range []string{"Healthy", "Progressing", "Degraded", "Suspended"} {
		if !seen[status] {
			missing = append(missing, status)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("no captured case expects %v", missing)
	}
}
