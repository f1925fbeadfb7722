"""Task scorers (plain Python, no trainer/Ray imports).

- `ruler.score(prediction, answers, mode="refine"|"part"|"all")`
- `longbench.score(prediction, answers, task, mode="refine"|"longbench")`
- `reward.score_response(data_source, response, answers)` and the verl entry point `reward.compute_score`
- `answers.join_answers` / `split_answers`: the official "|" round trip between dataset and reward manager
- `report.corpus_report` / `format_report` / `write_report`: per-task ×100 means and the LongBench average
"""

from refine.scoring.answers import join_answers, round_trip, split_answers
from refine.scoring.report import corpus_report, format_report, write_report
from refine.scoring.reward import compute_score, score_response

__all__ = [
    "compute_score",
    "corpus_report",
    "format_report",
    "join_answers",
    "round_trip",
    "score_response",
    "split_answers",
    "write_report",
]
