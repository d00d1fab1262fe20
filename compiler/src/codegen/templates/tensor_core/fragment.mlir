            %{{r}}c = arith.constant {{row}} : index
            %{{r}}0 = arith.addi %lgrp, %{{r}}c : index
            %{{r}}1 = arith.muli %{{r}}0, %cRW : index
            %{{r}}2 = arith.addi %{{r}}1, %tig : index
            %{{r}}3 = arith.constant {{word}} : index
            %{{r}}4 = arith.addi %{{r}}2, %{{r}}3 : index
            %{{v}} = memref.load %xs[%{{r}}4] : {{xs}}
{{words}}
