"""Tiny random transformers models, saved as Hugging Face folders, for fast tests."""

from __future__ import annotations

from pathlib import Path

# A small WordPiece vocabulary: the special tokens, then the words the test texts use.
WORDS = [
    "the",
    "a",
    "this",
    "movie",
    "film",
    "plot",
    "acting",
    "music",
    "story",
    "was",
    "is",
    "very",
    "really",
    "not",
    "quite",
    "good",
    "great",
    "fun",
    "lovely",
    "superb",
    "bad",
    "awful",
    "boring",
    "dull",
    "poor",
    "and",
    "but",
    "it",
]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
POSITIVE = ("good", "great", "fun", "lovely", "superb")
NEGATIVE = ("bad", "awful", "boring", "dull", "poor")


def make_tiny_bert(folder: Path, *, pooling: str | None = None) -> Path:
    """A 2-layer, 32-wide random BERT with a WordPiece tokenizer over :data:`VOCAB`.

    ``pooling`` ("cls", "max", "mean") adds a sentence-transformers pooling config.
    """
    import json

    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(folder))
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(str(folder))
    if pooling is not None:
        (folder / "modules.json").write_text(
            json.dumps(
                [
                    {
                        "idx": 0,
                        "name": "0",
                        "path": "",
                        "type": "sentence_transformers.models.Transformer",
                    },
                    {
                        "idx": 1,
                        "name": "1",
                        "path": "1_Pooling",
                        "type": "sentence_transformers.models.Pooling",
                    },
                ]
            )
        )
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": 32,
                    "pooling_mode_cls_token": pooling == "cls",
                    "pooling_mode_mean_tokens": pooling == "mean",
                    "pooling_mode_max_tokens": pooling == "max",
                }
            )
        )
    return folder


def make_tiny_vit(folder: Path) -> Path:
    """A 2-layer random ViT for 32x32 images, with its image processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    ViTModel(config).save_pretrained(str(folder))
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder


def sentiment_rows(n: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` short (text, label) rows of :data:`VOCAB` words, half pos and half neg."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        subject = rng.choice(("movie", "film", "plot", "acting", "music", "story"))
        extra = " and the music was really " + rng.choice(POSITIVE + NEGATIVE) if i % 3 else ""
        rows.append((f"the {subject} was very {word}{extra}", label))
    return rows
