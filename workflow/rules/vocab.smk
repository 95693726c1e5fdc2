# GLMD vocabulary compression: token counts -> kept vocabulary map, coverage curve, parameter counts.


rule count_tokens:
    input:
        corpus=lambda w: PLAN.corpora[PLAN.vocabularies[w.vocab].corpus].folder,
        tokenizer=lambda w: PLAN.vocabularies[w.vocab].tokenizer_folder,
        tasks=lambda w: [
            PLAN.tasks[t].folder for t in PLAN.vocabularies[w.vocab].count_tasks
        ],
    output:
        f"{R}/vocab/{{vocab}}/counts.csv",
    log:
        f"{R}/logs/count_tokens/{{vocab}}.log",
    benchmark:
        f"{R}/benchmarks/count_tokens/{{vocab}}.tsv"
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("count_tokens", 1)
    resources:
        **rule_resources("count_tokens", mem_mb=4000),
    shell:
        "kdflow count-tokens --corpus {input.corpus} --tokenizer {input.tokenizer} "
        "--tasks {input.tasks} --out {output} > {log} 2>&1"


rule compress_vocab:
    input:
        counts=f"{R}/vocab/{{vocab}}/counts.csv",
        teacher=model_dir(PLAN.teacher),
        tasks=[task.folder for task in PLAN.tasks.values()],
    output:
        vmap=f"{R}/vocab/{{vocab}}/map.json",
        coverage=f"{R}/vocab/{{vocab}}/coverage.csv",
        plot=f"{R}/vocab/{{vocab}}/coverage.png",
        params=f"{R}/vocab/{{vocab}}/params.json",
    log:
        f"{R}/logs/compress_vocab/{{vocab}}.log",
    benchmark:
        f"{R}/benchmarks/compress_vocab/{{vocab}}.tsv"
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("compress_vocab")
    resources:
        **rule_resources("compress_vocab"),
    params:
        spec=lambda w: as_json(config["vocabularies"][w.vocab]),
        out=lambda w: f"{R}/vocab/{w.vocab}",
    shell:
        "kdflow compress-vocab --name {wildcards.vocab} --counts {input.counts} --teacher {input.teacher} --tasks {input.tasks} "
        "--spec {params.spec:q} --out {params.out} > {log} 2>&1"
