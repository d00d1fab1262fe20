            %jg = arith.divui %j, %gsize : index
            %jg64 = arith.index_cast %jg : index to i64
            %jbit = arith.shli %o64, %jg64 : i64
            %jh = arith.andi %mask, %jbit : i64
            %ing = arith.cmpi ne, %jh, %z64 : i64
