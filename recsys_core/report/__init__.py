"""The offline HTML report of a two-stage run (`make report`): what it shows (``content``), its plots
(``figures``) and the page (``render``)."""
