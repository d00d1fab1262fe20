        %cj{{j}} = arith.constant {{first}} : index
        %tile{{j}} = arith.addi %wc0, %cj{{j}} : index
        %col{{j}} = arith.addi %tile{{j}}, %lgrp : index
        %colc{{j}} = arith.minui %col{{j}}, %nm1 : index
        %wr{{j}} = arith.addi %eN, %colc{{j}} : index
        %wrk{{j}} = arith.muli %wr{{j}}, %kw : index
        %wb{{j}} = arith.addi %wrk{{j}}, %tig : index
        %oc{{j}} = arith.addi %tile{{j}}, %tpair : index
