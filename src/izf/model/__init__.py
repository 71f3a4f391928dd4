from izf.model.classifiers import SoftmaxClassifier, naive_bayes_scores
from izf.model.flow import InvertibleFlow

__all__ = ["InvertibleFlow", "SoftmaxClassifier", "naive_bayes_scores"]
