"""Assemble ``benchmarks/README.md`` from the runner's latest markdown outputs (never edited by hand).

A section whose output is absent from this checkout keeps the table the README already holds (stamped with the
device, versions and commit it was measured at); a section never measured says so."""

from __future__ import annotations

from pathlib import Path

SECTIONS = [
    ("Kernels on the H200 (`python -m benchmarks kernels --device cuda`)", "kernels-cuda.md"),
    ("Kernels on the H200, TF32 (`--precision tf32`)", "kernels-cuda-tf32.md"),
    ("Kernels on the H200, bf16 operands (`--precision bf16`)", "kernels-cuda-bf16.md"),
    ("Kernels on the CPU (`make bench`)", "kernels-cpu.md"),
    ("Global selection on the H200 (`python -m benchmarks select --device cuda`)", "select-cuda.md"),
    ("Global selection on the CPU (`python -m benchmarks select`)", "select-cpu.md"),
    ("End to end on the H200 (`python -m benchmarks e2e --device cuda --model mlp`)", "e2e-mlp-cuda.md"),
    ("End to end on the CPU (`python -m benchmarks e2e`)", "e2e-digits-cpu.md"),
    ("Fisher-vector products on the H200 (`python -m benchmarks fvp --device cuda`)", "fvp-cuda.md"),
    ("Fisher-vector products on the CPU (`python -m benchmarks fvp`)", "fvp-cpu.md"),
    (
        "End to end: ResNet-18 on the H200 (`python -m benchmarks e2e --device cuda --model resnet18`)",
        "e2e-resnet18-cuda.md",
    ),
    (
        "End to end: ResNet-18 on the CPU (`python -m benchmarks e2e --model resnet18 --backends cpu`)",
        "e2e-resnet18-cpu.md",
    ),
    (
        "End to end: all-MiniLM-L6-v2 on the H200 (`python -m benchmarks e2e --device cuda --model minilm`)",
        "e2e-minilm-cuda.md",
    ),
    (
        "End to end: all-MiniLM-L6-v2 on the CPU (`python -m benchmarks e2e --model minilm --backends cpu`)",
        "e2e-minilm-cpu.md",
    ),
]
#: (title, output relative to the parent of the kernels' output folder): the kernels compiled without a GPU.
COMPILED = [("Kernels compiled for sm_90 and sm_80 (no GPU)", "gpu-compile/gpu-compile.md")]
QUALITY = [  # (title, output relative to the parent of the kernels' output folder)
    (
        "digits CNN (`python -m benchmarks quality --sparsities 0.7 0.8 0.9 --gradual 0.95`: one process per core "
        "with `--seed-list`, then `--merge`)",
        "quality/quality.md",
    ),
    ("all-MiniLM-L6-v2 on the H200 (`python -m benchmarks quality --model minilm --device cuda`)", "minilm/minilm.md"),
    (
        "all-MiniLM-L6-v2, 256 calibration sentences, on the CPU (`python -m benchmarks quality --model minilm "
        "--reduced --set calib_sentences=256 --out out/minilm_256`)",
        "minilm_256/minilm.md",
    ),
    (
        "all-MiniLM-L6-v2, 2:4 with FLS's N:M sets chosen exactly (`python -m benchmarks quality --model minilm "
        "--reduced --set calib_sentences=256 patterns=2:4 methods=FLS,FLS-uniform,SparseGPT,Wanda "
        "fls_nm_select=exact --out out/minilm_24exact`)",
        "minilm_24exact/minilm.md",
    ),
    (
        "all-MiniLM-L6-v2, ablation of FLS's options (`python -m benchmarks quality --model minilm --ablation`)",
        "minilm_ablation/ablation.md",
    ),
    (
        "all-MiniLM-L6-v2, reduced, on the CPU (`python -m benchmarks quality --model minilm --reduced`)",
        "minilm_reduced/minilm.md",
    ),
    (
        "all-MiniLM-L6-v2, does the learned λ help? (`python -m benchmarks quality --model minilm --lambda-study "
        "--set damping=1e-4`)",
        "minilm_lambda/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, does the learned λ help, γ = 1e-2 (`python -m benchmarks quality --model minilm "
        "--lambda-study --set damping=1e-2 --out out/minilm_lambda_1e-2`)",
        "minilm_lambda_1e-2/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, the early-stopping record at γ = 1e-2 (`python -m benchmarks quality --model minilm "
        "--lambda-study --set damping=1e-2 'variants=fit + refine (early-stopped),K-FAC' --out "
        "out/minilm_lambda_trace`)",
        "minilm_lambda_trace/lambda.md",
    ),
    *(
        (
            f"all-MiniLM-L6-v2, damping sweep, γ = {g}, with the validation cosine (`python -m benchmarks quality "
            f"--model minilm --lambda-study --set damping={g} 'variants=K-FAC start,fit,K-FAC' --out "
            f"out/minilm_lambda_sweep_{g}`)",
            f"minilm_lambda_sweep_{g}/lambda.md",
        )
        for g in ("1e-4", "1e-3", "1e-2", "1e-1")
    ),
    (
        "all-MiniLM-L6-v2, does the learned λ help, 256 calibration sentences, 70%, 80% and 2:4, beside SparseGPT "
        "(`python -m benchmarks quality --model minilm --lambda-study --set calib_sentences=256 calib_sizes=256 "
        "'variants=K-FAC start,fit,K-FAC,SparseGPT' val_sentences=128 eval_sentences=256 damping=1e-3 "
        "sparsities=0.7,0.8 patterns=unstructured,2:4 other_length=64 --out out/lambda_256`)",
        "lambda_256/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, does the learned λ help with little data: 16, 32 and 64 calibration sentences "
        "(`python -m benchmarks quality --model minilm --lambda-study --set calib_sentences=256 calib_sizes=16,32,64 "
        "'variants=K-FAC start,fit,K-FAC,SparseGPT' val_sentences=128 eval_sentences=256 damping=1e-3 "
        "sparsities=0.7 patterns=unstructured other_length=64 --out out/lambda_low`)",
        "lambda_low/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, wall time of FLS's K-FAC start and K-FAC-OBS (the transformer recipes) against "
        "SparseGPT, 70%, 128 calibration sentences of at most 48 tokens (`python -m benchmarks quality --model "
        "minilm --lambda-study --set calib_sentences=128 val_sentences=32 eval_sentences=256 max_length=48 "
        "damping=1e-3 sparsities=0.7 'variants=K-FAC start,K-FAC,SparseGPT' --out out/lambda_speed`)",
        "lambda_speed/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, the fit with probes focused on the candidates (`probe_focus`) against the isotropic fit "
        "and FLS's K-FAC start, 64 calibration sentences (`python -m benchmarks quality --model minilm "
        "--lambda-study --set sparsities=0.7,0.8 'variants=K-FAC start,fit,fit (focused)' --out out/lambda_focus`)",
        "lambda_focus/lambda.md",
    ),
    (
        "a small GPT trained on CPython's documentation, perplexity after pruning (`python -m benchmarks quality "
        "--model gpt`)",
        "gpt/gpt.md",
    ),
    (
        "a small GPT at 70%, block by block: the fit (200 aux steps per block) against K-FAC, one draw of each at "
        "this commit (`python -m benchmarks quality --model gpt --set methods=fls@blocks+200,kfac@blocks,sparsegpt "
        "cells=70% --out out/gpt_labels1`)",
        "gpt_labels1/gpt.md",
    ),
    (
        "a small GPT at 70%, block by block, 4 sampled labels per input in every statistics pass of FLS's start and "
        "K-FAC (the command above with label_samples=4 --out out/gpt_labels4)",
        "gpt_labels4/gpt.md",
    ),
    (
        "a small GPT at 70%, block by block, the methods' labels and probes drawn from seed 1 (the command above "
        "with method_seed=1 --out out/gpt_draw1; same model and windows)",
        "gpt_draw1/gpt.md",
    ),
    (
        "a small GPT at 70%, block by block, the methods' labels and probes drawn from seed 2 (method_seed=2 --out "
        "out/gpt_draw2)",
        "gpt_draw2/gpt.md",
    ),
    (
        "a small GPT at 70%, block by block, 4 sampled labels per input: fits of 50 and 100 aux steps per block "
        "(`python -m benchmarks quality --model gpt --set methods=fls@blocks+50,fls@blocks+100,sparsegpt cells=70% "
        "label_samples=4 --out out/gpt_labels4_steps`; its seconds shared the CPU with tests)",
        "gpt_labels4_steps/gpt.md",
    ),
    (
        "a small GPT at 70%, block by block, 1 sampled label per input: fits of 50 and 100 aux steps per block (the "
        "command above without label_samples --out out/gpt_labels1_steps; its seconds shared the CPU with tests)",
        "gpt_labels1_steps/gpt.md",
    ),
    (
        "all-MiniLM-L6-v2, 256 calibration sentences, block by block: FLS and K-FAC with FLS's solver beside "
        "FLS-uniform and SparseGPT (`python -m benchmarks quality --model minilm --reduced --set calib_sentences=256 "
        "methods=FLS-uniform,SparseGPT,FLS-blocks,K-FAC-blocks --out out/minilm_256_blocks`)",
        "minilm_256_blocks/minilm.md",
    ),
    (
        "all-MiniLM-L6-v2, does the learned λ help block by block? (`python -m benchmarks quality --model minilm "
        "--lambda-study --set sequential=blocks 'variants=K-FAC start,fit,K-FAC,SparseGPT' "
        "sparsities=0.7,0.8 patterns=unstructured,2:4 --out out/lambda_blocks`)",
        "lambda_blocks/lambda.md",
    ),
    (
        'all-MiniLM-L6-v2, block by block, the refinement on every weight (`aux_space="full"`) from the current λ '
        "and restarted from K-FAC statistics of the pruned block, against the fit and K-FAC (`python -m benchmarks "
        "quality --model minilm --lambda-study --set sequential=blocks 'variants=K-FAC start,fit,fit + refine "
        "(full),restart + refine (full),K-FAC' sparsities=0.7,0.8 patterns=unstructured,2:4 --out "
        "out/lambda_blocks_full`)",
        "lambda_blocks_full/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences, the restarted refinement on every weight "
        "against K-FAC and SparseGPT (`python -m benchmarks quality --model minilm --lambda-study --set "
        "sequential=blocks calib_sentences=256 calib_sizes=256 val_sentences=32 eval_sentences=256 other_length=64 "
        "'variants=K-FAC start,restart + refine (full),K-FAC,SparseGPT' sparsities=0.8,0.7 "
        "patterns=unstructured,2:4 --out out/lambda_blocks_256`)",
        "lambda_blocks_256/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 16 and 32 calibration sentences at 80%: the restarted refinement on every "
        "weight against K-FAC (`python -m benchmarks quality --model minilm --lambda-study --set sequential=blocks "
        "calib_sentences=256 calib_sizes=16,32 val_sentences=32 eval_sentences=256 'variants=restart + refine "
        "(full),K-FAC' sparsities=0.8 patterns=unstructured --out out/lambda_blocks_low`)",
        "lambda_blocks_low/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences: the fit's learning rate, and whether the aux "
        "loss it lowers tracks pruning (`python -m benchmarks quality --model minilm --lambda-study --set "
        "sequential=blocks calib_sentences=256 calib_sizes=256 val_sentences=32 eval_sentences=256 'variants=K-FAC "
        "start,fit (early-stopped),K-FAC' lrs=1e-3,1e-4,1e-5 validate_every=5 sparsities=0.8,0.7 "
        "patterns=unstructured --out out/lambda_blocks_lr`)",
        "lambda_blocks_lr/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences at 80%: the refinements at lr 1e-4, where the "
        "aux steps lower the held-out aux loss (`python -m benchmarks quality --model minilm --lambda-study --set "
        "sequential=blocks calib_sentences=256 calib_sizes=256 val_sentences=32 eval_sentences=256 'variants=K-FAC "
        "start,fit + refine (full),restart + refine (full),K-FAC' lr=1e-4 sparsities=0.8 patterns=unstructured --out "
        "out/lambda_blocks_256_lr1e-4`)",
        "lambda_blocks_256_lr1e-4/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences at 80%: the fit and the restarted refinement "
        "with A kept at its start, so the aux steps move only the Kronecker factors the column solver reads "
        "(`python -m benchmarks quality --model minilm --lambda-study --set sequential=blocks calib_sentences=256 "
        "calib_sizes=256 val_sentences=32 eval_sentences=256 'variants=K-FAC start,fit (Kronecker only, "
        "early-stopped),restart + refine (full, Kronecker only),K-FAC' lrs=1e-3,1e-4 validate_every=5 "
        "sparsities=0.8 patterns=unstructured --out out/lambda_blocks_kron`)",
        "lambda_blocks_kron/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences at 70% and 2:4: the fit at lr 1e-4 with A "
        "learnt and kept (`python -m benchmarks quality --model minilm --lambda-study --set sequential=blocks "
        "calib_sentences=256 calib_sizes=256 val_sentences=32 eval_sentences=256 'variants=K-FAC start,fit "
        "(early-stopped),fit (Kronecker only, early-stopped),K-FAC' lr=1e-4 validate_every=5 sparsities=0.7 "
        "patterns=unstructured,2:4 --out out/lambda_blocks_kron_70_24`)",
        "lambda_blocks_kron_70_24/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences: the fit at lr 1e-3 with A learnt and kept "
        "(`python -m benchmarks quality --model minilm --lambda-study --set sequential=blocks 'variants=K-FAC start,"
        "fit,fit (Kronecker only),K-FAC' sparsities=0.7,0.8 patterns=unstructured --out out/lambda_blocks_kron_64`)",
        "lambda_blocks_kron_64/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences at 80%: the fit and the restarted refinement "
        "with R and L balanced to one scale at every start, so that Adam moves both (`python -m benchmarks quality "
        "--model minilm --lambda-study --set sequential=blocks calib_sentences=256 calib_sizes=256 val_sentences=32 "
        "eval_sentences=256 'variants=K-FAC start,fit (balanced, early-stopped),restart + refine (full, balanced),"
        "K-FAC' validate_every=5 sparsities=0.8 patterns=unstructured --out out/lambda_blocks_balanced`)",
        "lambda_blocks_balanced/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences at 70% and 2:4: the restarted refinement with "
        "balanced factors against K-FAC (`python -m benchmarks quality --model minilm --lambda-study --set "
        "sequential=blocks calib_sentences=256 calib_sizes=256 val_sentences=32 eval_sentences=256 other_length=64 "
        "'variants=K-FAC start,restart + refine (full, balanced),K-FAC' validate_every=5 sparsities=0.7 "
        "patterns=unstructured,2:4 --out out/lambda_blocks_balanced_70_24`)",
        "lambda_blocks_balanced_70_24/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences at 80%, seed 1 (another calibration, validation "
        "and evaluation split, and other probes and sampled labels): the balanced restarted refinement against K-FAC "
        "(`python -m benchmarks quality --model minilm --lambda-study --set sequential=blocks calib_sentences=256 "
        "calib_sizes=256 val_sentences=32 eval_sentences=256 other_length=64 'variants=K-FAC start,restart + refine "
        "(full, balanced),K-FAC' validate_every=5 sparsities=0.8 patterns=unstructured seed=1 --out "
        "out/lambda_blocks_balanced_seed1`)",
        "lambda_blocks_balanced_seed1/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences, seed 0: the noise floor of “− K-FAC”. "
        "“restart” is K-FAC re-estimated through FLS (no aux step): it differs from K-FAC only in its sampled labels "
        "(`python -m benchmarks quality --model minilm --lambda-study --set sequential=blocks calib_sentences=256 "
        "calib_sizes=256 val_sentences=32 eval_sentences=256 other_length=64 other_text=docstrings 'variants=K-FAC "
        "start,restart,K-FAC' sparsities=0.8,0.7 patterns=unstructured,2:4 seed=0 --out "
        "out/lambda_blocks_restart_seed0`)",
        "lambda_blocks_restart_seed0/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences, seed 1: the noise floor of “− K-FAC”. "
        "“restart” is K-FAC re-estimated through FLS (no aux step): it differs from K-FAC only in its sampled labels "
        "(`python -m benchmarks quality --model minilm --lambda-study --set sequential=blocks calib_sentences=256 "
        "calib_sizes=256 val_sentences=32 eval_sentences=256 other_length=64 other_text=docstrings 'variants=K-FAC "
        "start,restart,K-FAC' sparsities=0.8,0.7 patterns=unstructured,2:4 seed=1 --out "
        "out/lambda_blocks_restart_seed1`)",
        "lambda_blocks_restart_seed1/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences, seed 2: the noise floor of “− K-FAC” "
        "(restart against K-FAC, which differ only in their sampled labels; the command above with 'variants=restart,"
        "K-FAC' sparsities=0.8,0.7 patterns=unstructured seed=2 --out out/lambda_blocks_restart_seed2)",
        "lambda_blocks_restart_seed2/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences, seed 3: the noise floor of “− K-FAC” "
        "(restart against K-FAC, which differ only in their sampled labels; the command above with 'variants=restart,"
        "K-FAC' sparsities=0.8,0.7 patterns=unstructured seed=3 --out out/lambda_blocks_restart_seed3)",
        "lambda_blocks_restart_seed3/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences, seed 0 (seeds 1 and 2 below): the fit "
        "against its K-FAC start, K-FAC and the restart (K-FAC with other sampled labels), on the evaluation "
        "sentences, at 64 tokens and on the standard library's docstrings (`python -m benchmarks quality --model "
        "minilm --lambda-study --set sequential=blocks calib_sentences=64 val_sentences=32 eval_sentences=256 "
        "other_length=64 other_text=docstrings 'variants=K-FAC start,fit,restart,K-FAC' sparsities=0.7,0.8 "
        "patterns=unstructured seed=S --out out/lambda_blocks_low64_seedS`)",
        "lambda_blocks_low64_seed0/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences, seed 1 (the command above with seed=1)",
        "lambda_blocks_low64_seed1/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences, seed 2 (the command above with seed=2)",
        "lambda_blocks_low64_seed2/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences, seed 0, 4 sampled labels per input in every "
        "statistics pass (`label_samples=4`): the restart and K-FAC with a quarter of the label noise (`python -m "
        "benchmarks quality --model minilm --lambda-study --set sequential=blocks calib_sentences=256 "
        "calib_sizes=256 val_sentences=32 eval_sentences=256 other_length=64 other_text=docstrings 'variants=K-FAC "
        "start,restart,K-FAC' label_samples=4 sparsities=0.8,0.7 patterns=unstructured seed=0 --out "
        "out/lambda_blocks_labels4_seed0`)",
        "lambda_blocks_labels4_seed0/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences: the fit from the K-FAC start damped by 10·γ, "
        "its γ annealed down to γ (`anneal_damping=10`) (`python -m benchmarks quality --model minilm "
        "--lambda-study --set sequential=blocks calib_sentences=256 calib_sizes=256 val_sentences=32 "
        "eval_sentences=256 other_length=64 other_text=docstrings 'variants=K-FAC start,fit (annealed, "
        "early-stopped),K-FAC' anneal=10 validate_every=5 sparsities=0.8,0.7 patterns=unstructured seed=0 --out "
        "out/lambda_blocks_anneal`)",
        "lambda_blocks_anneal/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences at 80%, 4 sampled labels per input: the "
        "balanced restarted refinement, seed 0 (K-FAC of the same seed and labels in the label_samples=4 table "
        "above) (`python -m benchmarks quality --model minilm --lambda-study --set sequential=blocks "
        "calib_sentences=256 calib_sizes=256 val_sentences=32 eval_sentences=256 other_length=64 "
        "other_text=docstrings 'variants=restart + refine (full, balanced)' label_samples=4 validate_every=5 "
        "sparsities=0.8 patterns=unstructured seed=0 --out out/lambda_blocks_balanced_labels4_seed0`)",
        "lambda_blocks_balanced_labels4_seed0/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences at 80%, 4 sampled labels per input: the "
        "balanced restarted refinement against K-FAC, seed 1 (the command above with 'variants=K-FAC start,restart "
        "+ refine (full, balanced),K-FAC' seed=1 --out out/lambda_blocks_balanced_labels4_seed1)",
        "lambda_blocks_balanced_labels4_seed1/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences, seed 0 (seeds 1 and 2 below): the fit with R "
        "and L kept triangular (`triangular_factors=True`, the official FishLeg code's Cholesky parameterisation) "
        "against the fit with full factors, its K-FAC start and K-FAC (`python -m benchmarks quality --model "
        "minilm --lambda-study --set sequential=blocks calib_sentences=64 val_sentences=32 eval_sentences=256 "
        "other_length=64 other_text=docstrings 'variants=K-FAC start,fit,fit (triangular),K-FAC' "
        "sparsities=0.7,0.8 patterns=unstructured seed=S --out out/lambda_blocks_tri64_seedS`)",
        "lambda_blocks_tri64_seed0/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences, seed 1: the triangular fit (the command above "
        "with seed=1; its seconds shared the CPU with tests)",
        "lambda_blocks_tri64_seed1/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences, seed 2: the triangular fit (the command above "
        "with seed=2)",
        "lambda_blocks_tri64_seed2/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences at 70%, seed 0: the full and the triangular fit, "
        "early-stopped, with their held-out aux-loss record per block (`python -m benchmarks quality --model "
        "minilm --lambda-study --set sequential=blocks calib_sentences=64 val_sentences=32 eval_sentences=256 "
        "'variants=K-FAC start,fit (early-stopped),fit (triangular, early-stopped)' validate_every=5 "
        "sparsities=0.7 patterns=unstructured seed=0 --out out/lambda_blocks_tri64_stop`)",
        "lambda_blocks_tri64_stop/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences, seed 0 (seeds 1 and 2 below), 4 sampled "
        "labels per input in every statistics pass: the fit against its K-FAC start and K-FAC, both with a quarter "
        "of the label noise (`python -m benchmarks quality --model minilm --lambda-study --set sequential=blocks "
        "calib_sentences=64 val_sentences=32 eval_sentences=256 other_length=64 other_text=docstrings "
        "'variants=K-FAC start,fit,K-FAC' label_samples=4 sparsities=0.7,0.8 patterns=unstructured seed=S --out "
        "out/lambda_blocks_low64_labels4_seedS`)",
        "lambda_blocks_low64_labels4_seed0/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences, seed 1, 4 sampled labels per input (the command "
        "above with seed=1)",
        "lambda_blocks_low64_labels4_seed1/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences, seed 2, 4 sampled labels per input (the command "
        "above with seed=2)",
        "lambda_blocks_low64_labels4_seed2/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences, seed 0: the fit validated by trial prunes "
        '(`validate_by="prune"`: each block\'s output error on the validation sentences after a prune with λ) '
        "against the plain fit, its K-FAC start and K-FAC (`python -m benchmarks quality --model minilm "
        "--lambda-study --set sequential=blocks calib_sentences=64 val_sentences=32 eval_sentences=256 "
        "other_length=64 other_text=docstrings 'variants=K-FAC start,fit,fit (prune-validated),K-FAC' "
        "sparsities=0.7,0.8 patterns=unstructured seed=0 --out out/lambda_blocks_pv64_seed0`)",
        "lambda_blocks_pv64_seed0/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences, seed 0: the fit validated by trial prunes "
        "scored at the last block's output (`validate_by=\"prune-last\"`; the command above with 'variants=K-FAC "
        "start,fit (prune-validated, last block),K-FAC' --out out/lambda_blocks_pvlast64_seed0)",
        "lambda_blocks_pvlast64_seed0/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 64 calibration sentences, seed 1: the fit validated by trial prunes at the "
        "block's and at the last block's output against the plain fit, its K-FAC start and K-FAC (the first command "
        "above with 'variants=K-FAC start,fit,fit (prune-validated),fit (prune-validated, last block),K-FAC' seed=1 "
        "--out out/lambda_blocks_pv64_seed1)",
        "lambda_blocks_pv64_seed1/lambda.md",
    ),
    (
        "all-MiniLM-L6-v2, block by block, 256 calibration sentences, seed 0: the fit validated by trial prunes at the "
        "last block's output against the plain fit, its K-FAC start and K-FAC (`python -m benchmarks quality --model "
        "minilm --lambda-study --set sequential=blocks calib_sentences=256 calib_sizes=256 val_sentences=32 "
        "eval_sentences=256 other_length=64 other_text=docstrings 'variants=K-FAC start,fit,fit (prune-validated, "
        "last block),K-FAC' sparsities=0.7,0.8 patterns=unstructured seed=0 --out out/lambda_blocks_pvlast256`)",
        "lambda_blocks_pvlast256/lambda.md",
    ),
    (
        "a small GPT at 70%, block by block: the fit of 200 aux steps per block validated every 25 by trial prunes "
        "on the validation windows, scored at the block's or the last block's output (`python -m benchmarks quality "
        "--model gpt --set 'methods=fls@blocks+200,fls@blocks+200/prune,fls@blocks+200/prune-last,kfac@blocks' "
        "cells=70% --out out/gpt_prune`)",
        "gpt_prune/gpt.md",
    ),
    (
        "all-MiniLM-L6-v2 cut to 2, 4 and 6 layers, SparseGPT's wall time: the library whole-model and block by "
        "block against the authors' flow (`python -m benchmarks quality --model minilm --blocks-timing`)",
        "blocks_timing/blocks_timing.md",
    ),
    (
        "digits CNN, does the learned λ help? (`python -m benchmarks quality --model digits --lambda-study "
        "--seed-list …`: one process per core, then `--merge`)",
        "digits_lambda/digits_lambda.md",
    ),
    (
        "digits CNN, gradual to 95%: λ refined at K-FAC's compute against K-FAC re-estimated and the frozen K-FAC "
        "start, 10 seeds (`python -m benchmarks quality --model digits --lambda-study --seed-list … --set "
        '"one_shot=FLS, K-FAC start, 0 aux steps,K-FAC" "gradual=refined, K-FAC\'s compute,K-FAC start, frozen,'
        'K-FAC re-estimated"`: seeds 0–2, 3–4, 5–7 and 8–9, two processes at a time, then `--merge` into '
        "out/digits_equal)",
        "digits_equal/digits_lambda.md",
    ),
    (
        "digits CNN, one-shot, 5 seeds: the held-out aux loss of λ at its start and after the fit, beside the "
        "accuracy it prunes to (`python -m benchmarks quality --model digits --lambda-study --seed-list … --set "
        '"one_shot=FLS-diagonal,FLS-diagonal, 0 aux steps,FLS, K-FAC start, 0 aux steps,K-FAC,oBERT" '
        '"gradual=K-FAC re-estimated" calib_sizes=64,1024`: seeds 0–2 and 3–4 in two processes, then `--merge` '
        "into out/digits_aux)",
        "digits_aux/digits_lambda.md",
    ),
]


def sections(readme: str) -> dict[str, str]:
    """``## title`` → body of an existing README."""
    found, title, body = {}, None, []
    for line in readme.splitlines():
        if line.startswith("## "):
            if title is not None:
                found[title] = "\n".join(body).strip()
            title, body = line[3:].strip(), []
        elif title is not None:
            body.append(line)
    if title is not None:
        found[title] = "\n".join(body).strip()
    return found


def build(out_dir: str | Path, previous: str = "") -> str:
    out = Path(out_dir)
    kept = sections(previous)

    def body(title: str, path: Path) -> str:
        if path.exists():
            return path.read_text().strip()
        return kept.get(title) or "_Not measured yet._"

    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks readme` from the latest runs under `out/bench`; every table carries "
        "the device, versions and commit it was measured on. Sections without a run say so.",
    ]
    for title, name in SECTIONS:
        lines += ["", f"## {title}", "", body(title, out / name)]
    for title, path in COMPILED:
        lines += ["", f"## {title}", "", body(title, out.parent / path)]
    for title, path in QUALITY:
        title = f"Quality: {title}"
        lines += ["", f"## {title}", "", body(title, out.parent / path)]
    return "\n".join(lines) + "\n"


def write(out_dir: str | Path, target: str | Path = Path(__file__).parent / "README.md") -> Path:
    target = Path(target)
    previous = target.read_text() if target.exists() else ""
    target.write_text(build(out_dir, previous))
    return target
