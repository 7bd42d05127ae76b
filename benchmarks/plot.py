"""benchmarks/scaling.png: aggregate full cycles per second against the number of processes."""

from __future__ import annotations

from .systems import BY_NAME

# One look per group, so the eye finds "ours" vs "peers" before reading the legend.
STYLE = {"library": ("-", "o", 2.2), "floor": ("--", "s", 1.6), "peer": (":", "^", 1.4), "reference": ("-.", "x", 1.0)}


def scaling_png(rows: list[dict], procs: tuple[int, ...], path: str, title: str) -> None:
    """Write the plot (log y axis: the systems span orders of magnitude); a note if there is no data."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = {}
    failed: dict[str, int] = {}
    for r in rows:
        if r["op"].startswith("mp/") and r.get("value"):
            series.setdefault(r["system"], {})[int(r["op"][3:])] = r["value"]
            failed[r["system"]] = failed.get(r["system"], 0) + r.get("errors", 0)
    # tab20's dark shades first: up to 20 systems without two lines sharing a colour.
    palette = [plt.get_cmap("tab20")(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    try:
        for colour, (system, points) in zip(palette, series.items(), strict=False):
            xs = [p for p in procs if p in points]
            group = BY_NAME[system].group if system in BY_NAME else "peer"
            linestyle, marker, width = STYLE[group]
            # A peer that corrupts itself under concurrency still gets a line, marked as such.
            label = f"{system} ({failed[system]:,} failed ops)" if failed[system] else system
            ax.plot(xs, [points[x] for x in xs], linestyle=linestyle, marker=marker, linewidth=width, label=label,
                    color=colour)
        if series:
            ax.set_yscale("log")
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
        else:
            ax.text(0.5, 0.5, "no multi-process results", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks(list(procs))
        ax.set_xlabel("processes on one pool")
        ax.set_ylabel("full cycles / s, all processes (log)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
