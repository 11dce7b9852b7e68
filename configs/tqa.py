"""TriviaQA (unfiltered, no context) over DPR's Wikipedia passages: the paper's open-domain QA setting.

As configs/nq.py (1,000 training questions, answer accuracy and reader EM / F1 on the test set),
with TriviaQA's questions: tensorflow-datasets `trivia_qa/unfiltered.nocontext` (its 11,313
`validation` questions are DPR's TriviaQA test set; answers are the aliases), or DPR's files.

  python -m interdistill_jax.main --config=configs/tqa.py \\
      --config.data.corpus_file=/data/dpr/psgs_w100.tsv --workdir=runs/tqa

  python -m interdistill_jax.main --config=configs/tqa.py:dpr \\
      --config.data.qa.train=/data/dpr/trivia-train.qa.csv \\
      --config.data.qa.test=/data/dpr/trivia-test.qa.csv \\
      --config.data.corpus_file=/data/dpr/psgs_w100.tsv --workdir=runs/tqa

`--config.data.qa.tfds_name=trivia_qa/rc.nocontext` uses the reading-comprehension subset.
"""

import importlib.util
import os


def _nq():
  # configs/ is not a package: load the shared builder from the file next to this one.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nq.py")
  spec = importlib.util.spec_from_file_location("_nq_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  return _nq().qa_config(arg, name="tqa", tfds_name="trivia_qa/unfiltered.nocontext")
