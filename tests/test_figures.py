"""The trade-off figure: what its axes say and which methods it marks (fairness/figures.py)."""
import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from fairness.figures import tradeoff_plot  # noqa: E402


def table():
    # a: best Dice, least fair; b: on the front; c: dominated by b (less Dice, less fair)
    return pd.DataFrame({"mean": [60.0, 55.0, 50.0], "mean_std": [1.0, 0.5, 0.5],
                         "sd_sex": [4.0, 1.0, 2.0], "sd_sex_std": [0.5, 0.2, 0.3],
                         "ser_sex": [1.5, 1.1, 1.2], "ser_sex_std": [0.1, 0.1, 0.1]},
                        index=pd.Index(["a", "b", "c"], name="method"))


def test_the_axes_name_the_class_whose_fairness_is_plotted():
    fig = tradeoff_plot(table(), "sex", fairness_of="kidney")
    left, right = fig.axes
    assert left.get_xlabel() == "SD of group mean kidney Dice by sex (%)  (fairer ←)"
    assert right.get_xlabel() == "SER of kidney Dice by sex  (fairer ←)"
    assert left.get_ylabel() == "mean Dice (%)"
    plain = tradeoff_plot(table(), "sex").axes[0].get_xlabel()
    assert plain == "SD of group mean Dice by sex (%)  (fairer ←)"


def test_the_front_and_the_best_method():
    left = tradeoff_plot(table(), "sex").axes[0]
    front = [line for line in left.get_lines() if line.get_label() == "Pareto front"][0]
    assert list(front.get_xdata()) == [1.0, 4.0] and list(front.get_ydata()) == [55.0, 60.0]   # c is dominated
    notes = {t.get_text(): t.xy for t in left.texts}
    assert notes == {"a": (4.0, 60.0), "b": (1.0, 55.0), "c": (2.0, 50.0)}


def test_labels_of_nearly_equal_methods_do_not_print_over_each_other():
    close = table()
    close.loc["d"] = {"mean": 55.1, "mean_std": 0.5, "sd_sex": 1.02, "sd_sex_std": 0.2,
                      "ser_sex": 1.101, "ser_sex_std": 0.1}
    fig = tradeoff_plot(close, "sex")
    renderer = fig.canvas.get_renderer()
    for ax, x in zip(fig.axes, (1.02, 1.101)):
        boxes = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
        assert not boxes["b"].overlaps(boxes["d"])
        assert {t.get_text(): t.xy for t in ax.texts}["d"] == (x, 55.1)     # the label still points at d
        assert [t.xyann for t in ax.texts if t.get_text() == "a"] == [(6, 5)]   # a label in the clear stays put
