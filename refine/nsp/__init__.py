"""ReFINE's next-sequence-prediction (NSP) algorithm as plain tensor functions (spec 2.A, 2.C, Q3-Q6, Q16-Q22).

No Ray, FSDP, workers or config objects: every function takes tensors and plain values. verl's own pure functions
are reused where they exist (GRPO advantage, the vanilla dual-clip policy loss). One inner step, in order:

0. `logprobs.position_entropy(logits [B,S,V]) -> [B,S]` (verl `entropy_from_logits`) and
   `logprobs.response_log_probs(logits [N,S+k,V], response_ids [N,k], *, temperature) -> [N,k]` (verl
   `logprobs_from_logits` on the k predicting positions / T), for the worker's analysis and old-log-prob forwards.
1. `positions.select_positions(entropy, attention_mask, *, n_chunks, response_length, mode="entropy",
   generator=None) -> LongTensor[B, C]`: rollout start r per chunk (smoothing, chunking, choice, +1, clamp).
   `positions.validate_nsp_sizes(max_prompt_length=, response_length=, n_chunks=)`: up-front size checks.
2. `prefixes.gather_target_hidden(hidden [B,S,H], positions, k) -> [B,C,k,H]` (run on the worker) and
   `prefixes.gather_target_ids(input_ids, positions, k) -> [B,C,k]`;
   `prefixes.build_rollout_batch(input_ids, attention_mask, positions, *, response_length, pad_token_id,
   ttt_n=1, source_uids=None) -> RolloutBatch` with `input_ids`/`attention_mask` [N,S] (re-left-padded prefixes),
   `ground_truth_ids` [N,k], `positions` [N], `source_index` [N], `chunk_index` [N], `uid` (np object array of str),
   N = B*C*ttt_n, sequence-major; `prefixes.expand_targets(targets [B,C,...], ttt_n) -> [N, ...]` in that order.
3. `rewards.sequence_reward(response_hidden, target_hidden, response_ids, target_ids, kind) -> FloatTensor[N]`
   (kind: cosine_similarity / binary / hybrid); `rewards.all_sequence_rewards(...)` (all three);
   `rewards.token_level_rewards(scores, response_mask) -> [N,k]` (scalar at the last response position);
   `rewards.reward_metrics(all_rewards) -> {"reward/cs_reward_mean", "reward/cs_reward_std", binary, hybrid}`.
4. `advantages.grpo_advantages(token_level_rewards, response_mask, uids, *, norm_adv_by_std_in_grpo=True)
   -> (advantages, returns)` via verl's `compute_grpo_outcome_advantage`.
5. `losses.ntp_loss(logits, input_ids, attention_mask, *, mask_pad_in_ntp)`, `losses.ntp_labels(...)` (labels for
   models that shift inside), `losses.ppo_clip_loss(old_log_prob, log_prob, advantages, response_mask, ...)
   -> (loss, {"actor/pg_clipfrac_ttt", "actor/ppo_kl_ttt", "actor/pg_clipfrac_lower_ttt"})` via verl's vanilla loss.
6. `update_plan.normalized_ppo_mini_batch_rows(m, *, n_chunks, ttt_n, world_size)` (M_ppo),
   `update_plan.plan_combined_update(n_sequences, n_rows, *, ppo_mini_batch_rows, micro_batch_size, n_chunks,
   ttt_n, sft_loss_coef, ppo_loss_coef, strict=True) -> CombinedUpdatePlan` (M, SFT mini, mu, GA_sft, GA_ppo,
   sft_scale, ppo_scale, mini_batches[(sft, ppo, sft_micro, ppo_micro) slices]),
   `update_plan.plan_ntp_only_update(n, *, micro_batch_size) -> NtpOnlyPlan` (no coefficient, Q22),
   `update_plan.combined_loss_metrics(sft_raw, pg_raw, plan)` / `ntp_only_loss_metrics(raw, plan)` (official scaled
   values plus the raw `actor/ntp_loss_raw_ttt`, `actor/pg_loss_raw_ttt`),
   `update_plan.combined_objective(sft_raw, pg_raw, plan)` (what one mini-batch pair's backward calls accumulate).

Modules are imported lazily by their users (`from refine.nsp.positions import select_positions`); importing
`refine.nsp` itself is cheap.
"""
