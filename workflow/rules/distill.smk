# Students and distillation: init_student -> distill_stage1 (corpus) -> distill_stage2 (task).


rule init_student:
    input:
        unpack(lambda w: PLAN.students[w.student].inputs()),
    output:
        directory(f"{R}/students/{{student}}"),
    log:
        f"{R}/logs/init_student/{{student}}.log",
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("init_student", 1)
    resources:
        **rule_resources("init_student"),
    params:
        spec=lambda w: as_json(config["students"][w.student]),
        seed=config["seed"],
    shell:
        "kdflow init-student --teacher {input.teacher} --spec {params.spec:q} --vocab-map '{input.vmap}' "
        "--out {output} --seed {params.seed} > {log} 2>&1"


rule distill_stage1:
    input:
        unpack(lambda w: PLAN.runs[w.run].stage1.inputs()),
    output:
        directory(f"{R}/runs/{{run}}/stage1"),
    log:
        f"{R}/logs/distill_stage1/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/distill_stage1/{{run}}.tsv"
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("distill_stage1")
    resources:
        **rule_resources("distill_stage1"),
    params:
        launcher=launcher("distill_stage1"),
        compute=compute_args("distill_stage1"),
        run=lambda w: as_json(run_recipe(config, w.run, None)),
        settings=lambda w: as_json(PLAN.runs[w.run].stage1.settings),
        cache=lambda w, input: str(Path(input.cache[0]).parent) if input.cache else "",
        work=lambda w: f"{R}/work/distill_stage1/{w.run}",
        deepspeed=as_json(config["deepspeed"]),
        seed=lambda w: PLAN.runs[w.run].seed,
    shell:
        "{params.launcher} distill --stage stage1 --student {input.student} --recipe {params.run:q} --name {wildcards.run} "
        "--settings {params.settings:q} --cache '{params.cache}' --corpus {input.corpus} "
        "--teacher {input.teacher} --out {output} --work {params.work} --deepspeed {params.deepspeed:q} "
        "--seed {params.seed} {params.compute} > {log} 2>&1"


rule distill_stage2:
    input:
        unpack(lambda w: PLAN.runs[w.run].stage2[w.task].inputs()),
    output:
        directory(f"{R}/runs/{{run}}/{{task}}"),
    log:
        f"{R}/logs/distill_stage2/{{run}}/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/distill_stage2/{{run}}/{{task}}.tsv"
    conda:
        "../../envs/kdflow.yaml"
    threads: rule_threads("distill_stage2")
    resources:
        **rule_resources("distill_stage2"),
    params:
        launcher=launcher("distill_stage2"),
        compute=compute_args("distill_stage2"),
        run=lambda w: as_json(run_recipe(config, w.run, w.task)),
        settings=lambda w: as_json(PLAN.runs[w.run].stage2[w.task].settings),
        cache=lambda w, input: str(Path(input.cache[0]).parent) if input.cache else "",
        work=lambda w: f"{R}/work/distill_stage2/{w.run}/{w.task}",
        deepspeed=as_json(config["deepspeed"]),
        seed=lambda w: PLAN.runs[w.run].seed,
    shell:
        "{params.launcher} distill --stage stage2 --student {input.student} --recipe {params.run:q} --name {wildcards.run} "
        "--settings {params.settings:q} --cache '{params.cache}' --task {input.task} "
        "--teacher {input.teacher} --out {output} --work {params.work} --deepspeed {params.deepspeed:q} "
        "--seed {params.seed} {params.compute} > {log} 2>&1"
