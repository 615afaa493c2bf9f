"""The demo world's CHAIR inputs run the real CHAIR scorer; values checked by hand."""

from vcdflow.data.demo_chair import build_demo_nltk_data, demo_lexicon, write_chair_synonyms
from vcdflow.io import write_json
from vcdflow.metrics import chair


def test_demo_lexicon_plurals():
    lex = demo_lexicon()
    assert lex["mugs"] == ("NNS", "mug") and lex["puppies"] == ("NNS", "puppy")
    assert lex["dishes"] == ("NNS", "dish") and lex["cup"] == ("NN", "cup")


def test_demo_chair_scores_by_hand(tmp_path):
    syn = write_chair_synonyms(tmp_path / "syn.txt")
    nltk_dir = build_demo_nltk_data(tmp_path / "nltk")
    cats = [
        {"id": 1, "name": "cup", "supercategory": "kitchen"},
        {"id": 9, "name": "dog", "supercategory": "nature"},
        {"id": 3, "name": "fork", "supercategory": "kitchen"},
    ]
    write_json(
        tmp_path / "inst.json",
        {
            "images": [{"id": 7, "file_name": "a.png", "width": 8, "height": 8}],
            "annotations": [
                {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}
            ],
            "categories": cats,
        },
    )
    write_json(
        tmp_path / "cap.json",
        {
            "images": [{"id": 7, "file_name": "a.png"}],
            "annotations": [{"id": 1, "image_id": 7, "caption": "a cup and a fork ."}],
        },
    )
    ev = chair.ChairEvaluator(syn, nltk_dir, instances=tmp_path / "inst.json", captions=tmp_path / "cap.json")
    records = [{"item_id": "c/7", "image_id": 7, "answer": "two mugs , a dog and a dog .", "error": None}]
    s = chair.score(records, ev)
    # gt = {cup, fork}; mentions = cup (mugs), dog, dog -> 2 of 3 hallucinated (repeats count)
    assert s["chair_s"] == 100.0
    assert abs(s["chair_i"] - 200 / 3) < 1e-9
    assert s["recall"] == 50.0  # {cup} of {cup, fork}
    rows = chair.score_items(records, ev)
    assert rows[0]["hallucinated_mentions"] == 2 and rows[0]["mentions"] == 3
