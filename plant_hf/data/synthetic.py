"""A deterministic synthetic corpus shaped like ICD coding: long noisy documents, a long tail of labels, and for
each label a few evidence words that appear sparsely in its documents (and now and then elsewhere)."""

import json
import os
from pathlib import Path

import numpy as np

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "su", "da", "fi", "go", "hu", "je", "ba")
# Label evidence: names of conditions and body parts, as ICD-coded notes carry them.
EVIDENCE_WORDS = tuple(
    """
    abscess acne allergy anemia aneurysm angina anxiety apnea appendicitis arrhythmia arthritis asthma autism
    bronchitis bruise burn bursitis cancer cataract cellulitis cholera cirrhosis colitis concussion
    constipation cough cramp cyst dandruff deafness dehydration delirium dementia depression dermatitis
    diabetes diarrhea dislocation dizziness eczema edema embolism emphysema epilepsy fatigue fever fibrosis flu
    fracture gallstones gangrene gastritis glaucoma goiter gout hemorrhage hepatitis hernia herpes hiccups
    hives hypertension hypothermia infection infertility inflammation influenza insomnia jaundice kidney
    leukemia lupus lymphoma malaria measles melanoma meningitis migraine mumps nausea neuralgia obesity
    osteoporosis pancreatitis paralysis pneumonia polio psoriasis rabies rash rickets ringworm rubella scabies
    sciatica scoliosis seizure sepsis shingles sinusitis smallpox sprain stroke syphilis tendonitis tetanus
    thrombosis tinnitus tonsillitis toothache tuberculosis tumor typhoid ulcer vertigo vomiting wart whiplash
    anorexia bulimia coma cardiac renal hepatic pulmonary thyroid insulin aorta femur tibia spine pelvis skull
    lung liver pancreas spleen bladder prostate ovary uterus cervix colon rectum stomach esophagus retina
    cornea
    """.split()
)
# Filler: the common words around the evidence.
NOISE_WORDS = tuple(
    """
    the of and to in is was for on with as by at from that this it an be are were has had have but not or which
    their his her they she he we you our its also than then there these those such more most other some any
    each every both few many much own same so very can will just should now after before during while through
    over under again further once here when where why how all no nor only too until up down out off above below
    between into about against patient day days week weeks month year time report note history review plan
    visit follow care clinic hospital admission discharge room bed team staff family home work school morning
    evening night today yesterday tomorrow early late normal stable good well fair poor mild moderate severe
    recent current prior previous new old first second third last next left right upper lower side front back
    area region level point part course stay treatment therapy medication dose daily twice weekly test result
    results value values exam examination findings study studies image images scan blood pressure heart rate
    pulse temperature weight height diet fluid intake output sleep pain walk walking exercise continue
    continued start started stop stopped increase increased decrease decreased change changed noted seen
    reported denies denied states stated appears appeared remains remained given received taken taking using
    used without within around along across toward behind beside beyond near far inside outside general overall
    total small large long short high low full empty open closed clear dark light warm cold dry wet soft hard
    quick slow number amount case cases group member members person people doctor nurse physician surgeon
    provider order orders call called phone office record records chart form forms list lists table paper line
    lines page pages section meeting discussion question questions answer answers problem problems issue issues
    reason reasons need needs
    """.split()
)


def synthetic_words(count: int, seed: int = 0) -> list[str]:
    """`count` distinct pronounceable pseudo-words: three syllables each, more where three cannot make `count`."""
    syllables = 3
    while len(_SYLLABLES) ** syllables < count:
        syllables += 1
    generator = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < count:
        words["".join(generator.choice(_SYLLABLES, size=syllables))] = None
    return list(words)


def synthetic_vocabulary(num_labels: int = 40, evidence_per_label: int = 3) -> tuple[list[str], list[str]]:
    """The evidence words (`evidence_per_label` per label, in label order) and the filler words of the corpus;
    pseudo-words extend the evidence when there are more labels than condition names."""
    needed = num_labels * evidence_per_label
    evidence = list(EVIDENCE_WORDS[:needed])
    if len(evidence) < needed:
        extra = [word for word in synthetic_words(2 * needed) if word not in NOISE_WORDS]
        evidence += extra[: needed - len(evidence)]
    return evidence, list(NOISE_WORDS)


def synthetic_records(
    num_documents: int,
    num_labels: int = 40,
    evidence_per_label: int = 3,
    length: tuple[int, int] = (60, 200),
    labels_per_document: tuple[int, int] = (1, 4),
    stray_evidence: float = 0.02,
    seed: int = 0,
    id_prefix: str = "doc",
) -> list[dict]:
    """Documents `{"id", "text", "labels"}`: label `L{i}` is drawn with Zipf-like frequency; each of a document's
    labels puts one or two of its evidence words into the noise; with probability `stray_evidence` per document a
    random label's evidence word appears without the label."""
    evidence_words, noise = synthetic_vocabulary(num_labels, evidence_per_label)
    evidence = np.array(evidence_words).reshape(num_labels, evidence_per_label)
    popularity = 1.0 / np.arange(1, num_labels + 1) ** 0.9
    popularity /= popularity.sum()
    generator = np.random.default_rng(seed)
    records = []
    for index in range(num_documents):
        size = generator.integers(labels_per_document[0], labels_per_document[1] + 1)
        labels = np.sort(generator.choice(num_labels, size=min(size, num_labels), replace=False, p=popularity))
        tokens = list(generator.choice(noise, size=generator.integers(length[0], length[1] + 1)))
        for label in labels:
            tokens += list(generator.choice(evidence[label], size=generator.integers(1, 3), replace=False))
        if generator.random() < stray_evidence:
            tokens.append(str(generator.choice(evidence[generator.integers(num_labels)])))
        generator.shuffle(tokens)
        records.append({"id": f"{id_prefix}{index}", "text": " ".join(tokens), "labels": [f"L{i}" for i in labels]})
    return records


def write_synthetic_corpus(folder: str | os.PathLike, sizes: dict[str, int] | None = None, **kwargs) -> Path:
    """Write train/dev/test JSON lines of a synthetic corpus (same labels and evidence in every split)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (split, count) in enumerate((sizes or {"train": 400, "dev": 100, "test": 100}).items()):
        records = synthetic_records(
            count,
            seed=kwargs.get("seed", 0) * 100 + offset,
            id_prefix=f"{split}-",
            **{k: v for k, v in kwargs.items() if k != "seed"},
        )
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder


__all__ = [
    "EVIDENCE_WORDS",
    "NOISE_WORDS",
    "synthetic_records",
    "synthetic_vocabulary",
    "synthetic_words",
    "write_synthetic_corpus",
]
