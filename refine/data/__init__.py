"""Raw-text data for ReFINE (spec 4.1): documents and QA prompts, left-padded, no chat template, no BOS.

- `refine.data.dataset.RawTextDataset(data_files, tokenizer, prompt_key="prompt", answer_key=None,
  data_source_key=None, max_prompt_length, max_response_length=None, filter_overlong=False, pad_token_id=None)`:
  official `TTTRLHFDataset` behaviour; items are dicts (`input_ids`, `attention_mask` [S]; with answers: `answers`
  str, `ground_truth_ids`, `ground_truth_attention_mask` [R]; with a data-source column: `data_source`).
- `refine.data.collate.collate_fn`: verl's own collate function.
- `refine.data.checks`: up-front column / document / answers-cell checks (ValueError naming column and value).
"""
