# Corpus: documents -> normalised, deduplicated, split, tokenised, packed token memmaps.


rule preprocess_corpus:
    input:
        corpus=lambda w: list(PLAN.corpora[w.corpus].inputs),
        tokenizer=lambda w: PLAN.corpora[w.corpus].tokenizer_folder,
    output:
        directory(f"{R}/corpus/{{corpus}}"),
    log:
        f"{R}/logs/preprocess_corpus/{{corpus}}.log",
    benchmark:
        f"{R}/benchmarks/preprocess_corpus/{{corpus}}.tsv"
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("preprocess_corpus", 1)
    resources:
        **rule_resources("preprocess_corpus", mem_mb=4000),
    params:
        source=lambda w: PLAN.corpora[w.corpus].source,
        spec=lambda w: as_json(config["corpora"][w.corpus]),
        settings=as_json(config["preprocess"]),
        seed=config["seed"],
    shell:
        "kdflow preprocess-corpus --source {params.source:q} --spec {params.spec:q} "
        "--tokenizer {input.tokenizer} --settings {params.settings:q} --seed {params.seed} "
        "--out {output} > {log} 2>&1"
