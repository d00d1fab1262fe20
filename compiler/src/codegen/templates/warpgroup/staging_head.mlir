{{head}}
            %wall = arith.constant -1 : i32
            %cSTG0 = arith.constant 128 : index
            %stg = arith.addi %bars, %cSTG0 : index
            %cWSB = arith.constant {{warp_staging}} : index
            %cwarp = arith.divui %tid, %c32 : index
            %cwo = arith.muli %cwarp, %cWSB : index
            %stw = arith.addi %stg, %cwo : index
            %cRS = arith.constant {{row_stride}} : index
            %stgr = arith.muli %lgrp, %cRS : index
            %stgt = arith.muli %tig, %c4 : index
            %stp0 = arith.addi %stw, %stgr : index
            %stp = arith.addi %stp0, %stgt : index
{{warp_rows}}
            %wword = arith.remui %lane, %c8 : index
            %wrow = arith.divui %lane, %c8 : index
            %wcol0 = arith.muli %wword, %c8 : index
            %wcol = arith.addi %nb0, %wcol0 : index
