"""tensorflow-datasets builders (array_record, no TensorFlow needed) for every dataset.

Each builder reads the official files from a local folder and stores one ``Record`` per
example as JSON bytes, so a prepared dataset is an ordinary tfds dataset that
``tfds.data_source(name, split=..., data_dir=...)`` opens on any host (local disk or GCS).
Bad records are reported exactly as by ``read_records``, and so is a record on which the
dataset's ranking metric cannot be computed (a multi-hop record without gold passages: an
error here, not a NaN metric after training); a run that stops leaves only tfds's
``incomplete.*`` folder, never a half-written dataset.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from gumbel_jax.data.reading import read_records
from gumbel_jax.data.synthetic import WorldConfig, make_records
from gumbel_jax.data.validation import DataError, ValidationReport

# Official file names per split (the first that exists is used).
SPLIT_FILES = {
    "hotpotqa": {"train": ["hotpot_train_v1.1.json"],
                 "validation": ["hotpot_dev_distractor_v1.json"]},
    "musique": {"train": ["musique_ans_v1.0_train.jsonl"],
                "validation": ["musique_ans_v1.0_dev.jsonl"]},
    "2wiki": {"train": ["train.json"], "validation": ["dev.json"]},
    "nq": {"train": ["train.json"], "validation": ["dev.json"], "test": ["test.json"]},
    "triviaqa": {"train": ["train.json"], "validation": ["dev.json"], "test": ["test.json"]},
}


def _record_info(builder, description: str):
    """One example = the record's id and its JSON bytes."""
    return tfds.core.DatasetInfo(
        builder=builder, description=description,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "record": tfds.features.Scalar(dtype=np.object_)}))


class _RecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared machinery: records as JSON bytes, keyed by their position in the file."""

    VERSION = tfds.core.Version("1.0.0")
    DATASET = ""

    def __init__(self, *, source_dir: str | os.PathLike | None = None,
                 max_bad_records: int = 100, **kwargs):
        self.source_dir = pathlib.Path(source_dir) if source_dir else None
        self.report = ValidationReport(max_bad_records=max_bad_records)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self):
        return _record_info(self, f"{self.DATASET} as gumbel_jax records (FiD schema).")

    def _split_generators(self, dl_manager):
        if self.source_dir is None or not self.source_dir.is_dir():
            raise DataError(f"{self.name}: source_dir {self.source_dir} is not a folder with "
                            "the official files")
        splits = {}
        for split, names in SPLIT_FILES[self.DATASET].items():
            found = [self.source_dir / n for n in names if (self.source_dir / n).is_file()]
            if found:
                splits[split] = self._generate_examples(found[0])
        if not splits:
            expected = sorted({n for names in SPLIT_FILES[self.DATASET].values()
                               for n in names})
            raise DataError(f"{self.source_dir}: none of the official {self.DATASET} files "
                            f"found (expected some of: {', '.join(expected)})")
        return splits

    def _generate_examples(self, path):
        records = read_records(path, self.DATASET, report=self.report,
                               require_ranking_labels=True)
        count = 0
        for count, record in enumerate(records, 1):
            yield count - 1, {"id": record.id, "record": record.dumps()}
        if not count:  # every record was bad: an empty split would train or score nothing
            raise DataError(f"{path}: no valid record.\n{self.report.summary()}")


class GjHotpotqa(_RecordBuilder):
    DATASET = "hotpotqa"


class GjMusique(_RecordBuilder):
    DATASET = "musique"


class GjTwoWiki(_RecordBuilder):
    DATASET = "2wiki"


class GjNq(_RecordBuilder):
    DATASET = "nq"


class GjTriviaqa(_RecordBuilder):
    DATASET = "triviaqa"


class GjSynthetic(tfds.core.GeneratorBasedBuilder):
    """The synthetic multi-hop world (no source files)."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, world: WorldConfig | None = None, num_train: int = 2000,
                 num_validation: int = 500, **kwargs):
        self.world = world if world is not None else WorldConfig()
        self.sizes = {"train": num_train, "validation": num_validation}
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self):
        return _record_info(self, "Synthetic two-hop questions (gumbel_jax).")

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, seed)
                for seed, split in enumerate(self.sizes)}

    def _generate_examples(self, split, seed):
        records = make_records(self.world, self.sizes[split], split_seed=seed, prefix=split)
        for index, record in enumerate(records):
            yield index, {"id": record.id, "record": record.dumps()}


BUILDERS = {"hotpotqa": GjHotpotqa, "musique": GjMusique, "2wiki": GjTwoWiki, "nq": GjNq,
            "triviaqa": GjTriviaqa, "synthetic": GjSynthetic}
