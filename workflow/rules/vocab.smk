# GLMD vocabulary compression: token counts -> kept vocabulary map, coverage curve, parameter counts.


rule count_tokens:
    input:
        corpus=lambda w: f"{R}/corpus/{vocab_corpus(w.vocab)}",
        tokenizer=lambda w: model_dir(corpus_tokenizer(config, vocab_corpus(w.vocab))),
        tasks=lambda w: [
            f"{R}/tasks/{t}" for t in config["vocabularies"][w.vocab]["count_tasks"]
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
        teacher=lambda w: model_dir(config["teacher"]),
        tasks=[f"{R}/tasks/{t}" for t in config["tasks"]],
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
