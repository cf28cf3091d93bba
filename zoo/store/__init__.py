"""The checkpoint store's inner layer: the catalog (SQLAlchemy tables, engine, migrations, the write
lock), content-addressed tensor packs, the write and read paths, lineage, and maintenance
(verify, gc, repack). :class:`zoo.Zoo` composes these; nothing here imports a learner."""
