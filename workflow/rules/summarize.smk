# Summary: every evaluated model in one table (CSV/Markdown/HTML), the runs described, and the plots;
# the HTML-wrapped outputs and plots make up the Snakemake report (`snakemake --report report.html`).


rule summarize:
    input:
        list(PLAN.summary_inputs),
    output:
        csv=f"{R}/summary.csv",
        md=f"{R}/summary.md",
        comparisons=f"{R}/comparisons.csv",
        html=report(
            f"{R}/summary.html",
            category="1. Summary",
            labels={"table": "scores, averages, size and speed"},
            caption="../report/summary.rst",
        ),
        runs=report(
            f"{R}/runs.html",
            category="2. Runs",
            labels={"table": "what each run is"},
            caption="../report/runs.rst",
        ),
        scores=report(
            f"{R}/plots/scores.png",
            category="3. Plots",
            labels={"plot": "per-task scores"},
            caption="../report/scores.rst",
        ),
        frontier=report(
            f"{R}/plots/frontier.png",
            category="3. Plots",
            labels={"plot": "score vs parameters"},
            caption="../report/frontier.rst",
        ),
        losses=report(
            f"{R}/plots/loss_curves.png",
            category="3. Plots",
            labels={"plot": "training loss"},
            caption="../report/loss_curves.rst",
        ),
        coverage=report(
            f"{R}/plots/coverage.png",
            category="3. Plots",
            labels={"plot": "vocabulary coverage"},
            caption="../report/coverage.rst",
        ),
        differences=report(
            f"{R}/plots/comparisons.png",
            category="3. Plots",
            labels={"plot": "paired differences"},
            caption="../report/comparisons.rst",
        ),
    log:
        f"{R}/logs/summarize.log",
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("summarize", 1)
    resources:
        **rule_resources("summarize", mem_mb=2000),
    params:
        manifest=as_json(PLAN.summary),
        out=lambda w, output: str(Path(output.csv).parent),
        plots=lambda w, output: str(Path(output.scores).parent),
    shell:
        "kdflow summarize --manifest {params.manifest:q} --out {params.out} --plots {params.plots} > {log} 2>&1"


rule reproduce:
    input:
        [path for tasks in PLAN.published_metrics.values() for path in tasks.values()],
    output:
        csv=f"{R}/reproduce.csv",
        md=f"{R}/reproduce.md",
    log:
        f"{R}/logs/reproduce.log",
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("reproduce", 1)
    resources:
        **rule_resources("reproduce", mem_mb=1000),
    params:
        manifest=as_json(
            {"published": config["published"], "metrics": PLAN.published_metrics}
        ),
    shell:
        "kdflow reproduce --manifest {params.manifest:q} --csv {output.csv} --md {output.md} > {log} 2>&1"
