"""Our models in lm-evaluation-harness, registered as model type "refine" (as fla's `evals/harness.py` does for fla).

lm-eval is the optional `eval` extra (`pip install -e ".[eval]"`) and is imported only when `register()` or `main()`
runs, so this module imports without it. Usage (RULER NIAH on a checkpoint; five of the eight NIAH tasks read an essay
haystack and nltk's punkt_tab that lm-eval downloads at run time: on offline compute nodes fill the caches first with
`scripts/cache_niah_data.py`, see `refine.eval.harness_data`; `scripts/eval_niah.py` needs no download at all):

    python -m refine.eval.harness --model refine \\
        --model_args pretrained=/path/to/checkpoint,max_length=16384,dtype=bfloat16 \\
        --tasks niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery \\
        --metadata '{"max_seq_lengths":[4096,8192,16384]}' --batch_size 1 --device cuda --output_path results/niah

`python -m refine.eval.harness` accepts every `lm_eval` command-line argument; it registers the model first and checks
that the requested NIAH tasks' data is cached or downloadable (one line and exit status 2 otherwise).
"""

from __future__ import annotations

import sys

MODEL_NAME = "refine"
_registered: type | None = None


def register() -> type:
    """Register the "refine" lm-eval model (an `HFLM` that first registers our models with the HF Auto classes).

    Idempotent; returns the class. Raises ImportError with the install hint when lm-eval is missing.
    """
    global _registered
    if _registered is not None:
        return _registered
    try:
        from lm_eval.api.registry import register_model
        from lm_eval.models.huggingface import HFLM
    except ImportError as error:
        raise ImportError(
            "lm-evaluation-harness is not installed; it is the optional extra: pip install -e '.[eval]'"
        ) from error

    class RefineLM(HFLM):
        """lm-eval's HF causal-LM wrapper for fla DeltaNet / GatedDeltaNet and LaCT checkpoints."""

        def __init__(
            self, pretrained: str = "", max_length: int = 16384, backend: str = "causal", pad_as_eos: bool = True,
            **kwargs,
        ):
            import refine.models  # noqa: F401  registers the model classes with AutoModelForCausalLM

            super().__init__(pretrained=pretrained, max_length=max_length, backend=backend, **kwargs)
            if pad_as_eos and self.tokenizer.eos_token is not None:
                # lm-eval pads with <unk> when there is no pad token; training and validation pad with EOS, and
                # LaCT's fast weights see pad tokens (Q7), so keep EOS (batch_size=1 avoids padding altogether)
                self.tokenizer.pad_token = self.tokenizer.eos_token

    register_model(MODEL_NAME)(RefineLM)
    _registered = RefineLM
    return RefineLM


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the "refine" model registered (argv defaults to sys.argv[1:]).

    Exits with status 2 and one line on stderr when a requested RULER NIAH task's data is missing offline.
    """
    from refine.eval.harness_data import MissingEvalData, check_niah_data, requested_tasks

    try:
        check_niah_data(requested_tasks(sys.argv[1:] if argv is None else argv))
    except MissingEvalData as error:
        print(f"refine.eval.harness: {error}", file=sys.stderr)
        sys.exit(2)
    register()
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
