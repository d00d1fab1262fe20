{{head}}
{{warp_rows}}
            %rw = arith.addi %rw0, %lgrp : index
            %tpair = arith.muli %tig, %c2 : index
            %oc = arith.addi %nb0, %tpair : index
{{halves}}
