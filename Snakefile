# kdflow: the root Snakefile only includes the workflow and declares the default target
# (Snakemake 9 runs nothing from a bare include).


include: "workflow/Snakefile"


localrules:
    default,


rule default:
    default_target: True
    input:
        rules.all.input,
