"""The model stage: FiVE's text encoder, prompts and TFS aggregator, and the MIL baselines.

See :mod:`fivewsi.model.registry` for the list of models and :mod:`fivewsi.model.outputs` for
the batch and output types every model shares.
"""
