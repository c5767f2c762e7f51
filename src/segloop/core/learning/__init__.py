"""Active learning: which regions should a person correct next?

The loop's last arrow.  An image (or several, or a folder of them) is
segmented with uncertainty (:mod:`segloop.core.inference.uncertainty`); a grid of
regions - tiles of a 2D image, in-plane tiles of every plane, whole planes, or
sub-volumes of a stack - is laid over it (:func:`region_grid`); every region
gets scores (:func:`score_regions`); a :class:`Strategy` picks ``k`` of them,
skipping those already reviewed or skipped.  Strategies share one interface so
they can be compared on the same regions:

``random``
    Uniform, seeded: the baseline every other strategy has to beat.
``uncertainty``
    Top ``k`` by score.
``diversity``
    Uncertainty + diversity: k-center greedy (Sener & Savarese 2018) on
    pooled encoder features (:func:`region_features`) among the top
    ``pool_factor * k`` by score, so ``k`` near-identical uncertain tiles are
    not all proposed.

:func:`~segloop.core.learning.pipeline.rank_regions` is the one pipeline (uncertainty ->
regions -> scores -> features -> strategy) over one or several images, used by the
widget, the loop without a screen and scripts; :func:`rank_images` is its short form.
:class:`ActiveLearningState` is the queue a person works through, saved as
``segloop-active-learning.json`` in the training folder root.
"""
