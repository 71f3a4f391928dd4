import pytest
import torch

from izf.evaluation.metrics import gzsl_metrics, harmonic_mean, per_class_mean_accuracy, zsl_metrics


def t(*values):
    return torch.tensor(values)


def test_per_class_mean_is_not_per_sample_mean():
    # class 0: 3 of 4 right; class 1: 0 of 1 right -> per-class mean 0.375 (per-sample 0.6)
    target, pred = t(0, 0, 0, 0, 1), t(0, 0, 0, 1, 0)
    assert per_class_mean_accuracy(pred, target, t(0, 1)) == pytest.approx(0.375)


def test_class_with_false_positives_but_no_samples_is_not_averaged_in():
    # Evaluating unseen classes {2, 3}; samples are mispredicted into seen class 0, which has no
    # samples here. torchmetrics' macro average over all 4 classes would count classes 0 and 1.
    target, pred = t(2, 2, 3, 3), t(2, 0, 3, 3)
    assert per_class_mean_accuracy(pred, target, t(2, 3)) == pytest.approx((0.5 + 1.0) / 2)


def test_class_of_subset_without_samples_is_an_error():
    with pytest.raises(ValueError, match=r"\[1\]"):
        per_class_mean_accuracy(t(0, 0), t(0, 0), t(0, 1))


def test_harmonic_mean():
    assert harmonic_mean(0.5, 1.0) == pytest.approx(2 / 3)
    assert harmonic_mean(0.0, 0.0) == 0.0


def _onehot_scores(pred, num_classes):
    return torch.nn.functional.one_hot(pred, num_classes).float()


def test_gzsl_hand_made_case():
    seen, unseen = t(0, 1), t(2, 3)
    # test_seen: class 0 all right (2/2), class 1 half (1/2, the miss goes to unseen class 2)
    y_s, p_s = t(0, 0, 1, 1), t(0, 0, 1, 2)
    # test_unseen: class 2 one of three (misses to seen class 0), class 3 right (1/1)
    y_u, p_u = t(2, 2, 2, 3), t(2, 0, 0, 3)
    m = gzsl_metrics(_onehot_scores(p_s, 4), y_s, _onehot_scores(p_u, 4), y_u, seen, unseen)
    u, s = (1 / 3 + 1) / 2, (1 + 0.5) / 2
    assert m["gzsl/U"] == pytest.approx(u)
    assert m["gzsl/S"] == pytest.approx(s)
    assert m["gzsl/H"] == pytest.approx(2 * u * s / (u + s))


def test_zsl_restricts_candidates_to_unseen():
    unseen = t(2, 3)
    # highest score on a seen class, but among unseen candidates class 2 / 3 wins
    scores = torch.tensor([[9.0, 0, 1, 0], [9.0, 0, 0, 1], [0, 9.0, 0, 1]])
    assert zsl_metrics(scores, t(2, 3, 2), unseen)["zsl/T1"] == pytest.approx((0.5 + 1) / 2)


def test_calibrated_stacking_moves_predictions_to_unseen():
    seen, unseen = t(0), t(1)
    scores_u = torch.tensor([[1.0, 0.8]])  # unseen sample, seen class slightly ahead
    scores_s = torch.tensor([[1.0, 0.5]])  # seen sample, clearly seen
    plain = gzsl_metrics(scores_s, t(0), scores_u, t(1), seen, unseen, gamma=0.0)
    stacked = gzsl_metrics(scores_s, t(0), scores_u, t(1), seen, unseen, gamma=0.3)
    assert (plain["gzsl/U"], plain["gzsl/S"]) == (0.0, 1.0)
    assert (stacked["gzsl/U"], stacked["gzsl/S"]) == (1.0, 1.0)


def _reference_gzsl(pred_seen, y_seen, pred_unseen, y_unseen, seen, unseen):
    """U, S, H counted image by image in plain Python: an independent implementation."""
    def mean_accuracy(pred, target, classes):
        per_class = []
        for c in classes:
            rows = [i for i, y in enumerate(target) if y == c]
            per_class.append(sum(pred[i] == c for i in rows) / len(rows))
        return sum(per_class) / len(per_class)
    u, s = mean_accuracy(pred_unseen, y_unseen, unseen), mean_accuracy(pred_seen, y_seen, seen)
    return u, s, (2 * u * s / (u + s) if u + s else 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gzsl_metrics_match_an_independent_count_on_random_predictions(seed):
    generator = torch.Generator().manual_seed(seed)
    num_classes = 50
    unseen = torch.randperm(num_classes, generator=generator)[:15].sort().values
    seen = torch.tensor(sorted(set(range(num_classes)) - set(unseen.tolist())))
    # Unequal class sizes (per-class and per-image means differ) and a seen bias in the scores.
    sizes = torch.linspace(1, 10, len(seen))
    y_seen = seen[torch.multinomial(sizes, 6000, replacement=True, generator=generator)]
    y_unseen = unseen[torch.randint(len(unseen), (4000,), generator=generator)]
    scores_seen, scores_unseen = (torch.randn(len(y), num_classes, generator=generator) for y in (y_seen, y_unseen))
    for scores, y in ((scores_seen, y_seen), (scores_unseen, y_unseen)):
        scores[torch.arange(len(y)), y] += 1.5  # the right class is ahead, often not enough
        scores[:, seen] += 0.5
    gamma = 0.3
    m = gzsl_metrics(scores_seen, y_seen, scores_unseen, y_unseen, seen, unseen, gamma)
    shift = gamma * torch.isin(torch.arange(num_classes), seen)
    u, s, h = _reference_gzsl((scores_seen - shift).argmax(1).tolist(), y_seen.tolist(),
                              (scores_unseen - shift).argmax(1).tolist(), y_unseen.tolist(),
                              seen.tolist(), unseen.tolist())
    assert 0.05 < u < 0.95 and 0.05 < s < 0.95  # a case where every part of the count matters
    assert (m["gzsl/U"], m["gzsl/S"], m["gzsl/H"]) == (pytest.approx(u), pytest.approx(s), pytest.approx(h))


def test_the_softmax_classifier_can_start_as_f_clswgans_code_does():
    from izf.model.classifiers import SoftmaxClassifier

    torch.manual_seed(0)
    classifier = SoftmaxClassifier(512, torch.arange(40), 40, init_std=0.02)
    assert classifier.linear.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert not classifier.linear.bias.any()
    default = SoftmaxClassifier(512, torch.arange(40), 40)  # torch's: uniform within ±1/√512, biases too
    assert default.linear.weight.abs().max().item() <= 1 / 512 ** 0.5 and default.linear.bias.any()
