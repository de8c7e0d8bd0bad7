package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Point is a sync time at a service count.
type Point struct {
	N   int
	Sec float64
}

// Report is everything one run measured.
type Report struct {
	Scale      []ScaleResult
	Text       []Point // kproxy's shape through nft -f
	Upstream   []Point // upstream kube-proxy's shape through nft -f
	Latency    LatencyResult
	Throughput ThroughputResult
}

// Print writes the tables.
func (r *Report) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "services×10\tmodel s\tcold sync s (best)\tcold runs s\tsame shape via nft -f s (best)\tupstream shape via nft -f s\tone change p50 ms\tp90 ms\tmax ms\tfull resync s\tpeak RSS MiB\theap MiB\t")
	for _, s := range r.Scale {
		runs := make([]string, len(s.ColdRuns))
		for i, c := range s.ColdRuns {
			runs[i] = fmt.Sprintf("%.2f", c)
		}
		fmt.Fprintf(tw, "%d\t%.2f\t%.2f\t%s\t%s\t%s\t%.1f\t%.1f\t%.1f\t%.2f\t%.0f\t%.0f\t\n", s.N, s.ModelSec, s.ColdSec, strings.Join(runs, " "),
			lookupPoint(r.Text, s.N), lookupPoint(r.Upstream, s.N),
			median(s.ChangeMs), percentile(s.ChangeMs, 0.9), percentile(s.ChangeMs, 1), s.ResyncSec, s.RSSMiB, s.HeapMiB)
	}
	for _, u := range r.Upstream {
		if !hasScale(r.Scale, u.N) {
			fmt.Fprintf(tw, "%d\t\t\t\t\t%.2f\t\t\t\t\t\t\t\n", u.N, u.Sec)
		}
	}
	tw.Flush()
	if r.Latency.Conns > 0 {
		l := r.Latency
		fmt.Fprintf(w, "\nconnect+first byte latency, µs (%d connections each, pod → pod on one bridge)\n", l.Conns)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "path\tp50\tp90\tp99\t")
		fmt.Fprintf(tw, "direct to the pod\t%.0f\t%.0f\t%.0f\t\n", l.Direct.P50, l.Direct.P90, l.Direct.P99)
		fmt.Fprintf(tw, "ClusterIP, %d services\t%.0f\t%.0f\t%.0f\t\n", l.FewN, l.Few.P50, l.Few.P90, l.Few.P99)
		fmt.Fprintf(tw, "ClusterIP, %d services\t%.0f\t%.0f\t%.0f\t\n", l.ManyN, l.Many.P50, l.Many.P90, l.Many.P99)
		tw.Flush()
		fmt.Fprintf(w, "ratio p50 %d/%d services: %.3f\n", l.ManyN, l.FewN, l.Many.P50/l.Few.P50)
	}
	if t := r.Throughput; len(t.DirectMBps) > 0 {
		d, v := median(t.DirectMBps), median(t.DNATMBps)
		dm, vm := percentile(t.DirectMBps, 1), percentile(t.DNATMBps, 1)
		fmt.Fprintf(w, "\nbulk TCP throughput client → node → pod, MiB/s (%d alternating runs per path)\n", len(t.DirectMBps))
		fmt.Fprintf(w, "  routed to the pod: median %.0f, best %.0f\n  through the ClusterIP (DNAT): median %.0f, best %.0f\n", d, dm, v, vm)
		fmt.Fprintf(w, "  DNAT/direct: median %.1f%%, best %.1f%%\n", 100*v/d, 100*vm/dm)
	}
}

func lookupPoint(ps []Point, n int) string {
	for _, p := range ps {
		if p.N == n {
			return fmt.Sprintf("%.2f", p.Sec)
		}
	}
	return "-"
}

func hasScale(ss []ScaleResult, n int) bool {
	for _, s := range ss {
		if s.N == n {
			return true
		}
	}
	return false
}

// Plot writes a PNG of sync time against service count (log-log).
func (r *Report) Plot(path string) error {
	p := plot.New()
	p.Title.Text = "nftables: load N services × 10 endpoints into an empty namespace"
	p.X.Label.Text = "services"
	p.Y.Label.Text = "seconds"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = false, false
	var cold, resync plotter.XYs
	for _, s := range r.Scale {
		cold = append(cold, plotter.XY{X: float64(s.N), Y: s.ColdSec})
		resync = append(resync, plotter.XY{X: float64(s.N), Y: s.ResyncSec})
	}
	lines := []any{"kproxy cold sync (netlink)", cold, "kproxy full resync (netlink)", resync}
	if len(r.Text) > 0 {
		lines = append(lines, "same shape via nft -f", points(r.Text))
	}
	if len(r.Upstream) > 0 {
		lines = append(lines, "upstream shape via nft -f", points(r.Upstream))
	}
	if err := plotutil.AddLinePoints(p, lines...); err != nil {
		return err
	}
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}

func points(ps []Point) plotter.XYs {
	out := make(plotter.XYs, len(ps))
	for i, x := range ps {
		out[i] = plotter.XY{X: float64(x.N), Y: x.Sec}
	}
	return out
}
