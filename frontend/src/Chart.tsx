// A line chart on uPlot (canvas; stays smooth at thousands of points). `series` share the x axis.
import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#0a7ea4", "#bf3989", "#57606a"];

export interface ChartProps {
  title: string;
  x: number[];
  series: { label: string; values: (number | null)[] }[];
  xLabel?: string;
}

export function Chart({ title, x, series, xLabel = "round" }: ChartProps) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const shape = series.map((s) => s.label).join("|");

  useEffect(() => {
    if (!box.current) return;
    const width = Math.max(280, box.current.clientWidth || 600);
    const opts: uPlot.Options = {
      title,
      width,
      height: 240,
      scales: { x: { time: false } },
      // Whole rounds on the x axis (no 1.2, 1.4, …).
      axes: [{ label: xLabel, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, {}],
      series: [{ label: xLabel }, ...series.map((s, i) => ({ label: s.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true }))],
    };
    plot.current = new uPlot(opts, [x, ...series.map((s) => s.values)] as uPlot.AlignedData, box.current);
    const onResize = () => plot.current?.setSize({ width: Math.max(280, box.current?.clientWidth ?? width), height: 240 });
    window.addEventListener("resize", onResize);
    return () => {
      window.removeEventListener("resize", onResize);
      plot.current?.destroy();
      plot.current = null;
    };
    // Rebuilt when the set of series changes; data updates go through setData below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [shape, title]);

  useEffect(() => {
    plot.current?.setData([x, ...series.map((s) => s.values)] as uPlot.AlignedData);
  }, [x, series]);

  return (
    <figure className="chart" aria-label={title}>
      {x.length === 0 ? <p className="empty">No rounds have closed yet.</p> : null}
      <div ref={box} />
    </figure>
  );
}
