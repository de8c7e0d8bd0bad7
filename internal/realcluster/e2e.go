package realcluster

import (
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// E2EOptions select the upstream e2e specs to run.
type E2EOptions struct {
	// Focus and Skip are ginkgo regular expressions on the spec texts.
	Focus, Skip string
	// ReportDir receives the JUnit report (junit_01.xml) and the output
	// (e2e.log); default a directory under the harness's.
	ReportDir string
	// Timeout is the whole suite's (--ginkgo.timeout); default 1h.
	Timeout time.Duration
}

// SpecResult is one spec's outcome.
type SpecResult struct {
	Name   string // the spec's full text
	Status string // passed, failed, skipped, ...
	Time   time.Duration
	// Failure is the failure's text, for a failed spec.
	Failure string
}

// E2EResult is a run of the upstream e2e suite.
type E2EResult struct {
	// Specs are the specs run (not those filtered out), by name, and any
	// failed suite node ([SynchronizedBeforeSuite]...).
	Specs     []SpecResult
	ReportDir string
	Log       string // e2e.test's output file
	Elapsed   time.Duration
}

// Counts returns the numbers of passed and failed specs.
func (r *E2EResult) Counts() (passed, failed int) {
	for _, s := range r.Specs {
		switch s.Status {
		case "passed":
			passed++
		case "skipped", "pending":
		default:
			failed++
		}
	}
	return passed, failed
}

// Failed returns the failed specs' names.
func (r *E2EResult) Failed() []string {
	var out []string
	for _, s := range r.Specs {
		if s.Status != "passed" && s.Status != "skipped" && s.Status != "pending" {
			out = append(out, s.Name)
		}
	}
	return out
}

// RunE2E runs the upstream e2e binary (e2e.test from the tools directory)
// against the cluster and reads its JUnit report. An error means the run
// itself could not be judged (no report); failed specs are in the result.
func (h *Harness) RunE2E(ctx context.Context, o E2EOptions) (*E2EResult, error) {
	if o.ReportDir == "" {
		o.ReportDir = filepath.Join(h.Dir, "e2e-"+time.Now().Format("150405"))
	}
	if o.Timeout == 0 {
		o.Timeout = time.Hour
	}
	if err := os.MkdirAll(o.ReportDir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(o.ReportDir, "e2e.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := []string{
		"--kubeconfig=" + h.Kubeconfig,
		"--provider=skeleton",
		"--kubectl-path=" + h.Tool("kubectl"),
		"--report-dir=" + o.ReportDir,
		"--e2e-output-dir=" + o.ReportDir,
		"--disable-log-dump=true",
		"--ginkgo.timeout=" + o.Timeout.String(),
		"--ginkgo.no-color",
		"--ginkgo.focus=" + o.Focus,
	}
	if o.Skip != "" {
		args = append(args, "--ginkgo.skip="+o.Skip)
	}
	cmd := exec.CommandContext(ctx, h.Tool("e2e.test"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = o.ReportDir
	// kubectl (run by the framework) must find no other cluster.
	cmd.Env = append(os.Environ(), "KUBECONFIG="+h.Kubeconfig)
	start := time.Now()
	runErr := cmd.Run()
	res := &E2EResult{ReportDir: o.ReportDir, Log: logPath, Elapsed: time.Since(start)}
	specs, err := readJUnit(filepath.Join(o.ReportDir, "junit_01.xml"))
	if err != nil {
		return res, fmt.Errorf("e2e.test (%v): %w; see %s", runErr, err, logPath)
	}
	res.Specs = specs
	return res, nil
}

type junitSuites struct {
	Suites []struct {
		Cases []junitCase `xml:"testcase"`
	} `xml:"testsuite"`
}

type junitCase struct {
	Name    string  `xml:"name,attr"`
	Status  string  `xml:"status,attr"`
	Time    float64 `xml:"time,attr"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
	Failure *struct {
		Text string `xml:",chardata"`
	} `xml:"failure"`
	Error *struct {
		Text string `xml:",chardata"`
	} `xml:"error"`
}

func readJUnit(path string) ([]SpecResult, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s junitSuites
	if err := xml.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []SpecResult
	for _, suite := range s.Suites {
		for _, c := range suite.Cases {
			r := SpecResult{Name: c.Name, Status: c.Status, Time: time.Duration(c.Time * float64(time.Second))}
			if r.Status == "" {
				switch {
				case c.Failure != nil || c.Error != nil:
					r.Status = "failed"
				case c.Skipped != nil:
					r.Status = "skipped"
				default:
					r.Status = "passed"
				}
			}
			if c.Failure != nil {
				r.Failure = c.Failure.Text
			} else if c.Error != nil {
				r.Failure = c.Error.Text
			}
			// "[It] [sig-network] Services ...": specs are [It] nodes; the
			// suite's own nodes ([SynchronizedBeforeSuite], reports) count
			// only when they fail.
			name, isSpec := strings.CutPrefix(r.Name, "[It] ")
			if !isSpec && r.Status == "passed" {
				continue
			}
			r.Name = name
			// The specs the focus filtered out are "skipped" with the message
			// "skipped"; those a spec skipped itself say why.
			if r.Status == "skipped" && (c.Skipped == nil || c.Skipped.Message == "skipped" || c.Skipped.Message == "") {
				continue
			}
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ConformanceFocus selects the [Conformance] specs of [sig-network] Services.
const ConformanceFocus = `\[sig-network\] Services .*\[Conformance\]`

// ServicesFocus and ServicesSkip select every [sig-network] Services spec that
// is not Serial, Disruptive, Slow, a Feature or about load balancers.
const (
	ServicesFocus = `\[sig-network\] Services `
	ServicesSkip  = `\[Serial\]|\[Disruptive\]|\[Slow\]|\[Feature:|Feature:|LoadBalancer|[Ll]oad [Bb]alancer`
)
